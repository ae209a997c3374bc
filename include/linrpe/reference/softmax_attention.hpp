#pragma once
/// \file
/// \brief reference::softmax_attention: exact softmax attention with an additive relative bias b_{j−i}.

#include "../errors.hpp"
#include "../types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

namespace linrpe {
namespace reference {

/// \brief Exact softmax attention with a relative bias (Shaw et al. 2018; Raffel et al. 2020), in double:
///
///     a_ij = scale · q_i·k_j + b(p_k + j − p_q − i),   out_i = Σ_j softmax_j(a_ij) v_j
///
/// (j ≤ i only, when causal). `scale` defaults to 1/√D; an empty `bias` means b ≡ 0. O(N·Nk·(D + E))
/// time, O(Nk) memory per row. This is the target of Toeplitz RPE (Luo et al., NeurIPS 2021).
template <class DerivedQ, class DerivedK, class DerivedV>
row_matrix<double> softmax_attention(const Eigen::MatrixBase<DerivedQ>& q, const Eigen::MatrixBase<DerivedK>& k,
                                     const Eigen::MatrixBase<DerivedV>& v, masking mask = masking::none,
                                     const std::function<double(index)>& bias = {},
                                     double scale = std::numeric_limits<double>::quiet_NaN(), index q_first = 0,
                                     index k_first = 0)
{
    if (k.cols() != q.cols()) detail::fail("k columns", q.cols(), k.cols());
    if (v.rows() != k.rows()) detail::fail("v rows", k.rows(), v.rows());
    if (std::isnan(scale)) scale = 1.0 / std::sqrt(static_cast<double>(std::max<index>(q.cols(), 1)));
    const row_matrix<double> qd = q.template cast<double>(), kd = k.template cast<double>(), vd = v.template cast<double>();
    row_matrix<double> out = row_matrix<double>::Zero(q.rows(), v.cols());
    vector<double> logits(k.rows());
    for (index i = 0; i < q.rows(); ++i) {
        const index qpos = q_first + i;
        index visible = 0;
        double top = -std::numeric_limits<double>::infinity();
        for (index j = 0; j < k.rows(); ++j) {
            const index kpos = k_first + j;
            if (mask == masking::causal && kpos > qpos) {
                logits[j] = -std::numeric_limits<double>::infinity();
                continue;
            }
            logits[j] = scale * qd.row(i).dot(kd.row(j)) + (bias ? bias(kpos - qpos) : 0.0);
            top = std::max(top, logits[j]);
            ++visible;
        }
        if (visible == 0) continue;
        double total = 0;
        for (index j = 0; j < k.rows(); ++j) {
            const double p = std::isinf(logits[j]) && logits[j] < 0 ? 0.0 : std::exp(logits[j] - top);
            total += p;
            out.row(i) += p * vd.row(j);
        }
        out.row(i) /= total;
    }
    return out;
}

} // namespace reference
} // namespace linrpe
