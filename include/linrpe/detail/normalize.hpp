#pragma once
// IWYU pragma: private
/// \file
/// \brief The last stage of every mixer: out = num / (den + eps) (sum), num (none), or num / rms(num) (rms).

#include "../types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>

namespace linrpe {
namespace detail {

/// \brief Normalizes the numerator rows in `out` (rows, E) in place; `den` (rows) is read under `sum` only.
///
///     sum:  out_i = num_i / (den_i + eps)
///     none: out_i = num_i
///     rms:  out_i = num_i / sqrt(mean_e num_ie² + eps)
///
/// rms squares the numerator, which overflows once |num| exceeds ~1.8e19 (float) and would turn the row into
/// 0. Rows with max_e |num_ie| = m > 1 are first scaled by the power of two s = 2^−k with m·s in [1/2, 1)
/// (exact: only the exponents change), and then
///     num_i / sqrt(mean num_i² + eps) = (s·num_i) / sqrt(mean (s·num_i)² + s²·eps)
/// so eps keeps its meaning and the result is the same up to rounding (bit for bit unless s²·eps underflows,
/// where eps is negligible anyway). Rows with m <= 1 cannot overflow and take the formula as is.
/// Cost: two more passes over the rows (max and scale).
template <class S>
void normalize_rows(Eigen::Ref<row_matrix<S>> out, const vector<S>* den, normalization norm, S eps)
{
    switch (norm) {
    case normalization::sum:
        out.array().colwise() /= (den->array() + eps);
        break;
    case normalization::none:
        break;
    case normalization::rms: {
        if (out.cols() == 0) break;
        vector<S> pow2 = vector<S>::Ones(out.rows()); // (rows): s_i
        for (index i = 0; i < out.rows(); ++i) {
            const S m = out.row(i).cwiseAbs().maxCoeff();
            if (m > S(1) && std::isfinite(m)) {
                int k = 0;
                std::frexp(m, &k); // m = f·2^k, f in [1/2, 1)
                pow2[i] = std::ldexp(S(1), -k);
            }
        }
        out.array().colwise() *= pow2.array(); // exact
        const vector<S> scale =
            (out.rowwise().squaredNorm().array() / static_cast<S>(out.cols()) + eps * pow2.array().square()).rsqrt();
        out.array().colwise() *= scale.array();
        break;
    }
    }
}

} // namespace detail
} // namespace linrpe
