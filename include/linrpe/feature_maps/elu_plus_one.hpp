#pragma once
/// \file
/// \brief feature_maps::elu_plus_one: φ(x) = elu(x) + 1 (Katharopoulos et al., ICML 2020).

#include "../types.hpp"

namespace linrpe {
namespace feature_maps {

/// \brief φ(x) = elu(x) + 1 = (x + 1 for x > 0, exp(x) otherwise): positive, so `sum` normalization is safe.
/// Katharopoulos, Vyas, Pappas, Fleuret, *Transformers are RNNs*, ICML 2020. Cost O(N·D).
struct elu_plus_one {
    static constexpr bool is_positive = true;
    index output_dim(index input_dim) const { return input_dim; }
    template <class S>
    void apply(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> phi, const feature_context&) const
    {
        // elu(x) + 1 = exp(min(x, 0)) + max(x, 0): branch-free, so Eigen's vectorized exp is used
        // (select() would evaluate coefficient by coefficient through scalar expf).
        phi = (x.array().min(S(0)).exp() + x.array().max(S(0))).matrix();
    }
    /// VJP hook (docs/design.md §16): dx = dphi ⊙ φ'(x) with φ' = 1 for x > 0 and exp(x) = φ otherwise, i.e.
    /// φ' = min(φ, 1) read from the forward features `phi` = apply(x) (no second exp). Cost O(N·D).
    template <class S>
    void apply_backward(const Eigen::Ref<const row_matrix<S>>& /*x*/, const Eigen::Ref<const row_matrix<S>>& phi,
                        const Eigen::Ref<const row_matrix<S>>& dphi, Eigen::Ref<row_matrix<S>> dx,
                        const feature_context&) const
    {
        dx = (dphi.array() * phi.array().min(S(1))).matrix();
    }
};

} // namespace feature_maps
} // namespace linrpe
