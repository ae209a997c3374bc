#pragma once
/// \file
/// \brief feature_maps::relu: φ(x) = max(x, 0) + floor.

#include "../errors.hpp"
#include "../types.hpp"

namespace linrpe {
namespace feature_maps {

/// \brief φ(x) = max(x, 0) + floor, floor >= 0 (SPE's LRA runs and performer-pytorch use floor = 1e-3,
/// which keeps every denominator away from 0). Non-negative, so `sum` normalization is safe. Cost O(N·D).
struct relu {
    static constexpr bool is_positive = true;
    double floor = 0.0;

    relu() = default;
    explicit relu(double floor_value) : floor(floor_value)
    {
        detail::require_finite("relu floor", floor_value);
        detail::require_non_negative("relu floor", floor_value);
    }
    index output_dim(index input_dim) const { return input_dim; }
    template <class S>
    void apply(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> phi, const feature_context&) const
    {
        phi = (x.array().max(S(0)) + static_cast<S>(floor)).matrix();
    }
    /// VJP hook (DESIGN §13): dx = dphi ⊙ 1[x > 0] (the floor is a constant; the kink at 0 takes slope 0).
    template <class S>
    void apply_backward(const Eigen::Ref<const row_matrix<S>>& x, const Eigen::Ref<const row_matrix<S>>& /*phi*/,
                        const Eigen::Ref<const row_matrix<S>>& dphi, Eigen::Ref<row_matrix<S>> dx,
                        const feature_context&) const
    {
        dx = (x.array() > S(0)).select(dphi.array(), S(0)).matrix();
    }
};

} // namespace feature_maps
} // namespace linrpe
