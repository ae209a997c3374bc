#pragma once
/// \file
/// \brief feature_maps::identity: φ(x) = x (signed; the un-normalized "linear" kernel q·k).

#include "../types.hpp"

namespace linrpe {
namespace feature_maps {

/// \brief φ(x) = x. Scores q·k are signed, so use normalization::rms or none (or opt in to sum).
/// Cost O(N·D) (a copy).
struct identity {
    static constexpr bool is_positive = false;
    index output_dim(index input_dim) const { return input_dim; }
    template <class S>
    void apply(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> phi, const feature_context&) const
    {
        phi = x;
    }
    /// VJP hook (docs/design.md §16): dx = J_φ(x)ᵀ dphi = dphi. `phi` = apply(x) is unused here.
    template <class S>
    void apply_backward(const Eigen::Ref<const row_matrix<S>>& /*x*/, const Eigen::Ref<const row_matrix<S>>& /*phi*/,
                        const Eigen::Ref<const row_matrix<S>>& dphi, Eigen::Ref<row_matrix<S>> dx,
                        const feature_context&) const
    {
        dx = dphi;
    }
};

} // namespace feature_maps
} // namespace linrpe
