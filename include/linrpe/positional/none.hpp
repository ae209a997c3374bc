#pragma once
/// \file
/// \brief positional::none: plain linear attention, no positional encoding.

#include "../types.hpp"

namespace linrpe {
namespace positional {

/// \brief No positional encoding: w_ij = 1 (or the causal mask), ψ_i = φ(q_i), κ_j = φ(k_j).
///
/// Katharopoulos et al., *Transformers are RNNs*, ICML 2020. Cost O(N·M·E) time, O(M·E) state.
struct none {
    static constexpr bool has_pre_feature = false;
    static constexpr bool has_post_feature = false;
    static constexpr bool has_mixing = false;
    /// Scores are φ(q)·φ(k): non-negative whenever the feature map is positive.
    bool preserves_positivity(index /*max_offset*/) const { return true; }
};

} // namespace positional
} // namespace linrpe
