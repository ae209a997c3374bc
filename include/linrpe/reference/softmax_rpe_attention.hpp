#pragma once
/// \file
/// \brief reference::softmax_rpe_attention: exact softmax attention with a relative kernel per dimension,
/// the target that SPE approximates.

#include "../errors.hpp"
#include "../types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

namespace linrpe {
namespace reference {

/// \brief Softmax attention whose logits weight each dimension by a relative kernel (Liutkus et al., ICML 2021),
/// in double:
///
///     ℓ_ij = (1/√D) Σ_d q_i[d] P_d(δ) k_j[d],   δ = (q_first + i) − (k_first + j)   (query minus key)
///     out_i = Σ_j softmax_j(ℓ_ij) v_j                                              (j ≤ i only, when causal)
///
/// `kernel(d, δ)` returns P_d(δ), e.g. `[&](index d, index t) { return spe.expected_kernel(h, d, t); }`;
/// it is called once per (d, δ). P ≡ 1 is ordinary softmax attention. O(N·Nk·D + (N + Nk)·D) time.
template <class DerivedQ, class DerivedK, class DerivedV>
row_matrix<double> softmax_rpe_attention(const Eigen::MatrixBase<DerivedQ>& q, const Eigen::MatrixBase<DerivedK>& k,
                                         const Eigen::MatrixBase<DerivedV>& v, masking mask,
                                         const std::function<double(index, index)>& kernel, index q_first = 0,
                                         index k_first = 0)
{
    if (k.cols() != q.cols()) detail::fail("k columns", q.cols(), k.cols());
    if (v.rows() != k.rows()) detail::fail("v rows", k.rows(), v.rows());
    if (!kernel) detail::fail("kernel", "a callable P(d, delta)", "an empty std::function");
    const index n = q.rows(), nk = k.rows(), dim = q.cols();
    row_matrix<double> out = row_matrix<double>::Zero(n, v.cols());
    if (n == 0 || nk == 0) return out;
    // P tabulated over every lag that occurs: δ_min = q_first − (k_first + nk − 1).
    const index lag_min = q_first - (k_first + nk - 1), lags = n + nk - 1;
    row_matrix<double> table(lags, dim); // (lags, D)
    for (index t = 0; t < lags; ++t)
        for (index d = 0; d < dim; ++d) table(t, d) = kernel(d, lag_min + t);
    const double scale = 1.0 / std::sqrt(static_cast<double>(std::max<index>(dim, 1)));
    const row_matrix<double> qd = q.template cast<double>(), kd = k.template cast<double>(), vd = v.template cast<double>();
    vector<double> logits(nk);
    for (index i = 0; i < n; ++i) {
        double top = -std::numeric_limits<double>::infinity();
        for (index j = 0; j < nk; ++j) {
            if (mask == masking::causal && k_first + j > q_first + i) {
                logits[j] = -std::numeric_limits<double>::infinity();
                continue;
            }
            const index lag = (q_first + i) - (k_first + j);
            logits[j] = scale * (qd.row(i).array() * table.row(lag - lag_min).array() * kd.row(j).array()).sum();
            top = std::max(top, logits[j]);
        }
        if (!std::isfinite(top)) continue;
        double total = 0;
        for (index j = 0; j < nk; ++j) {
            if (!std::isfinite(logits[j])) continue;
            const double p = std::exp(logits[j] - top);
            total += p;
            out.row(i) += p * vd.row(j);
        }
        out.row(i) /= total;
    }
    return out;
}

} // namespace reference
} // namespace linrpe
