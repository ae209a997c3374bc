#pragma once
/// \file
/// \brief positional::toeplitz_rpe: relative positional encoding as Toeplitz sequence-mixing weights.

#include "../detail/relative_weights.hpp"
#include "../errors.hpp"
#include "../types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>

namespace linrpe {
namespace positional {

/// \brief Toeplitz RPE (Luo, Li, Cai, He, Peng, Zheng, Ke, Wang, Liu, *Stable, Fast and Accurate: Kernelized
/// Attention with Relative Positional Encoding*, NeurIPS 2021): every pair (i, j) is weighted by
///
///     w_ij = c_{j−i} = exp(b_{j−i}),   out_i = Σ_j c_{j−i} ⟨φ(q_i), φ(k_j)⟩ v_j / (Σ_j c_{j−i} ⟨φ(q_i), φ(k_j)⟩ + eps)
///
/// so that with φ = FAVOR+ it approximates softmax attention with the additive relative bias b_{j−i}.
/// One learned scalar per head and offset t = j − i (positions are absolute, so it is key − query), stored for
/// |t| < T_max and clipped beyond (b_t = b_{±(T_max−1)}): every length works, and T_max >= N gives the
/// paper's unclipped form. Causal attention uses only t <= 0.
///
/// The kernels use exp(b − m), m = max b over the offsets the call can see, so no exponent overflows, and
/// the front folds e^m back exactly (into eps under `sum` and `rms`, into the result under `none`): the
/// result is the formula with exp(b), finite whenever it is representable, whatever m a call picks.
/// b = 0 (the initial value) is plain linear attention.
///
/// Cost per head (options::toeplitz; `automatic` picks by a measured cost model):
/// - dense:  O(N·Nk·(M + E)) time, O(128·Nk) memory;
/// - fft:    O(M·E·L log L), L >= N + Nk − 1, memory O(L·tile) (Luo et al., Algorithm 1); causal by divide
///           and conquer, O(M·E·N log² N), so that no future token enters a past output's rounding;
/// - banded: O(N·(T_max·(M + E) + M·E)) when T_max < N (ours: the clipped far part is lagged linear attention).
/// The streaming decoder costs O(T_max·(M + E) + M·E) per token.
///
/// \tparam Scalar type of the stored biases (the attention may run in another scalar type).
template <class Scalar = float>
class toeplitz_rpe {
public:
    using scalar_type = Scalar;
    static constexpr bool has_pre_feature = false;
    static constexpr bool has_post_feature = false;
    static constexpr bool has_mixing = true;

    /// \param heads H >= 1; \param t_max T_max >= 1, number of distinct offsets on each side (b has 2·T_max − 1 values).
    toeplitz_rpe(index heads, index t_max) : m_t_max(t_max)
    {
        detail::require_positive("toeplitz_rpe heads", heads);
        detail::require_positive("toeplitz_rpe t_max", t_max);
        bias = row_matrix<Scalar>::Zero(heads, 2 * t_max - 1);
    }

    /// From trained biases (H, 2·T_max − 1): column t + T_max − 1 holds b_t; the column count must be odd.
    explicit toeplitz_rpe(const row_matrix<Scalar>& biases) : m_t_max((biases.cols() + 1) / 2)
    {
        detail::require_positive("toeplitz_rpe bias rows (heads)", biases.rows());
        if (biases.cols() < 1 || biases.cols() % 2 == 0)
            detail::fail("toeplitz_rpe bias columns", "an odd count 2*t_max - 1 >= 1", biases.cols());
        detail::require_all_finite("toeplitz_rpe bias", biases);
        bias = biases;
    }

    /// \brief b per head and offset: bias(h, t + T_max − 1) = b_t for −T_max < t < T_max. Public so that
    /// trained weights load; checked (shape and finiteness) at every use.
    row_matrix<Scalar> bias;

    index heads() const { return bias.rows(); }
    index t_max() const { return m_t_max; }

    /// b_t of `head` for any offset (clipped).
    Scalar offset_bias(index head, index t) const
    {
        check_head(head);
        return bias(head, std::clamp(t, -(m_t_max - 1), m_t_max - 1) + m_t_max - 1);
    }

    /// Sets b of one head from a vector of 2·T_max − 1 values (offsets −(T_max−1)..T_max−1).
    void set_bias(index head, const Eigen::Ref<const vector<Scalar>>& b)
    {
        check_head(head);
        if (b.size() != 2 * m_t_max - 1)
            detail::fail("toeplitz_rpe bias length (2*t_max - 1)", 2 * m_t_max - 1, b.size());
        detail::require_all_finite("toeplitz_rpe bias", b);
        bias.row(head) = b.transpose();
    }

    /// Sets every head's b from (H, 2·T_max − 1) values (the shape of parameter_gradients::biases, so that an
    /// optimizer step reads `set_biases(b − lr·g)`); validated (shape, finite) before anything changes.
    template <class T>
    void set_biases(const row_matrix<T>& b)
    {
        if (b.rows() != bias.rows() || b.cols() != 2 * m_t_max - 1)
            detail::fail("toeplitz_rpe biases shape", detail::shape(bias.rows(), 2 * m_t_max - 1), detail::shape(b.rows(), b.cols()));
        detail::require_all_finite("toeplitz_rpe biases", b);
        bias = b.template cast<Scalar>();
    }

    // ---- parameter gradients (docs/design.md §16) -------------------------------------------------------------

    /// \brief ∂L/∂b for every head and stored offset, in double: biases(h, t + T_max − 1); clipped offsets
    /// (|t| >= T_max) are folded into the two end columns, and a causal call gives 0 for t > 0.
    struct parameter_gradients {
        row_matrix<double> biases; ///< (H, 2·T_max − 1)
    };
    parameter_gradients make_parameter_gradients() const
    {
        return {row_matrix<double>::Zero(bias.rows(), 2 * m_t_max - 1)};
    }
    /// P = 2·T_max − 1 biases per head.
    index gradient_size() const { return 2 * m_t_max - 1; }
    void add_gradients(index head, const double* flat, parameter_gradients& pg) const
    {
        pg.biases.row(head) += Eigen::Map<const Eigen::RowVectorXd>(flat, gradient_size());
    }
    void validate_gradients(const parameter_gradients& pg) const
    {
        if (pg.biases.rows() != bias.rows() || pg.biases.cols() != gradient_size())
            detail::fail("parameter_gradients.biases shape", detail::shape(bias.rows(), gradient_size()),
                         detail::shape(pg.biases.rows(), pg.biases.cols()));
    }
    /// \brief VJP hook of mixing_weights: the mixers report, for the weights `used` that they applied
    /// (c_t = exp(b_t − shift), the shift included), dlog_c[t + T_max − 1] = c_t·∂L/∂c_t summed over every
    /// pair whose clipped offset is t. That is ∂L/∂b_t: the result does not depend on the shift a call picks
    /// (the front folds e^{shift} back exactly), so holding it fixed is exact. Adds into grad[0, P).
    template <class S>
    void mixing_weights_backward(index /*head*/, const detail::relative_weights<S>& /*used*/, const vector<double>& dlog_c,
                                 double* grad) const
    {
        if (!grad) return;
        for (index i = 0; i < gradient_size(); ++i) grad[i] += dlog_c[i];
    }

    /// c = exp(b) > 0 keeps scores non-negative whenever φ >= 0.
    bool preserves_positivity(index /*max_offset*/) const { return true; }

    /// Called by the core before any work: head in range, bias shape (H, 2·T_max − 1), finite b.
    void check_input(index /*input_dim*/, index head) const
    {
        check_head(head);
        if (bias.cols() != 2 * m_t_max - 1)
            detail::fail("toeplitz_rpe bias columns (2*t_max - 1)", 2 * m_t_max - 1, bias.cols());
        detail::require_all_finite("toeplitz_rpe bias", bias.row(head));
    }

    /// \brief c_t = exp(b_t − m) of `head` for every stored offset (size 2·T_max − 1), with m = max b_t over
    /// the offsets t_first <= t <= t_last that the call can see (clipped to |t| < T_max; causal calls see
    /// t <= 0 only), returned as `shift`. Every weight the call reads is then in (0, 1]: no exponent
    /// overflows and the largest weight is exactly 1, whatever b holds at unused offsets (a causal call is
    /// not affected by b_{t>0}). The front folds e^m back exactly: eps becomes eps·e^{−m} under `sum` and
    /// eps·e^{−2m} under `rms`, and the result is multiplied by e^m once under `none`. Computed in long double.
    template <class S>
    detail::relative_weights<S> mixing_weights(index head, index t_first, index t_last) const
    {
        check_head(head);
        detail::relative_weights<S> w;
        w.t_max = m_t_max;
        const index lo = std::clamp(t_first, -(m_t_max - 1), m_t_max - 1) + m_t_max - 1,
                    hi = std::clamp(t_last, -(m_t_max - 1), m_t_max - 1) + m_t_max - 1;
        long double shift = 0;
        for (index i = lo; i <= hi; ++i) shift = (i == lo) ? bias(head, i) : std::max<long double>(shift, bias(head, i));
        w.shift = static_cast<double>(shift); // a value of b: exact in double
        w.c.resize(bias.cols());
        for (index i = 0; i < bias.cols(); ++i) w.c[i] = static_cast<S>(std::exp(static_cast<long double>(bias(head, i)) - shift));
        return w;
    }

private:
    void check_head(index head) const
    {
        if (head < 0 || head >= bias.rows())
            detail::fail("head", detail::concat("a head index in [0, ", bias.rows(), ") of toeplitz_rpe"), head);
    }

    index m_t_max;
};

} // namespace positional
} // namespace linrpe
