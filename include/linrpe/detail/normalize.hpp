#pragma once
// IWYU pragma: private
/// \file
/// \brief The last stage of every mixer: out = num / (den + eps) (sum), num (none), or num / rms(num) (rms).

#include "../types.hpp"

#include <Eigen/Core>

#include <algorithm>

namespace linrpe {
namespace detail {

/// \brief Normalizes the numerator rows in `out` (rows, E) in place; `den` (rows) is read under `sum` only.
///
///     sum:  out_i = num_i / (den_i + eps)
///     none: out_i = num_i
///     rms:  out_i = num_i / sqrt(mean_e num_ie² + eps)
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
        const vector<S> scale =
            (out.rowwise().squaredNorm().array() / static_cast<S>(std::max<index>(out.cols(), 1)) + eps).rsqrt();
        out.array().colwise() *= scale.array();
        break;
    }
    }
}

} // namespace detail
} // namespace linrpe
