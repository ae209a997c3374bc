#pragma once
/// \file
/// \brief feature_maps::relu: φ(x) = max(x, 0) + shift.

#include "../errors.hpp"
#include "../types.hpp"

namespace linrpe {
namespace feature_maps {

/// \brief φ(x) = max(x, 0) + shift, shift >= 0: an additive shift of every feature (SPE's LRA runs and
/// performer-pytorch use 1e-3, which keeps every denominator away from 0). Non-negative, so `sum`
/// normalization is safe. Cost O(N·D).
struct relu {
    static constexpr bool is_positive = true;
    /// The additive shift (finite, >= 0); checked by the constructor and before every call.
    double shift = 0.0;

    relu() = default;
    explicit relu(double shift_value) : shift(shift_value) { check_shift(); }

    /// The former name of `shift` (it is added to every feature, it bounds nothing from below).
    [[deprecated("relu::floor() is the additive shift: use relu::shift")]] double& floor() { return shift; }
    [[deprecated("relu::floor() is the additive shift: use relu::shift")]] double floor() const { return shift; }

    index output_dim(index input_dim) const { return input_dim; }
    /// Before a call: `shift` is public, so it is checked again (finite, >= 0).
    void check_input(index /*input_dim*/, index /*head*/) const { check_shift(); }
    template <class S>
    void apply(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> phi, const feature_context&) const
    {
        phi = (x.array().max(S(0)) + static_cast<S>(shift)).matrix();
    }

    /// VJP hook (docs/design.md: gradients): dx = dphi ⊙ 1[x > 0] (the shift is a constant; the kink at 0 takes slope 0).
    template <class S>
    void apply_backward(const Eigen::Ref<const row_matrix<S>>& x, const Eigen::Ref<const row_matrix<S>>& /*phi*/,
                        const Eigen::Ref<const row_matrix<S>>& dphi, Eigen::Ref<row_matrix<S>> dx,
                        const feature_context&) const
    {
        dx = (x.array() > S(0)).select(dphi.array(), S(0)).matrix();
    }

private:
    void check_shift() const
    {
        detail::require_finite("relu shift", shift);
        detail::require_non_negative("relu shift", shift);
    }
};

} // namespace feature_maps
} // namespace linrpe
