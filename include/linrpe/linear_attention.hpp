#pragma once
/// \file
/// \brief linear_attention: the one core that every positional-encoding family plugs into.

#include "detail/causal_mixer.hpp"
#include "detail/gradient_blocks.hpp"
#include "detail/mixer_setup.hpp"
#include "detail/noncausal_mixer.hpp"
#include "detail/normalize.hpp"
#include "detail/parallel.hpp"
#include "detail/toeplitz_mixer.hpp"
#include "detail/toeplitz_segments.hpp"
#include "detail/toeplitz_stream.hpp"
#include "detail/traits.hpp"
#include "errors.hpp"
#include "positional/none.hpp"
#include "types.hpp"
#include "views.hpp"
#include "workspace.hpp"

#include <Eigen/Core>

#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

namespace linrpe {

template <class Attention>
class decoder;
template <class Attention>
class attention_state;
namespace detail {
template <class Attention>
struct sequence_calls;
} // namespace detail

/// \brief Linear (kernelized) attention with a positional encoding, for one head or a batch of heads.
///
/// For each query i (docs/design.md §2):
///
///     ψ_i = post_i(φ(pre_i(q_i))),  κ_j = post_j(φ(pre_j(k_j)))
///     out_i = Σ_j w_ij ⟨ψ_i, κ_j⟩ v_j / (Σ_j w_ij ⟨ψ_i, κ_j⟩ + eps)        (normalization::sum)
///
/// with w_ij = 1, the causal mask 1[j <= i], or the encoding's relative weights c_{j−i} (times the mask).
/// Without sequence-mixing weights the cost is O((N + Nk)·M'·E) time and O(M'·E) state (non-causal: two
/// GEMMs; causal: chunked GEMMs); with Toeplitz weights see positional::toeplitz_rpe.
///
/// \tparam FeatureMap         φ: `is_positive`, `output_dim(D)`, `apply(X, Φ, feature_context)`.
/// \tparam PositionalEncoding stage flags, `preserves_positivity(max_offset)` and the hooks of its stages.
/// \tparam Scalar             float or double; all accumulation is in Scalar. Defaults to the encoding's
///                            `scalar_type`, else the feature map's, else float: linear_attention<F> and
///                            linear_attention<F, positional::none> are float unless told `double`
///                            (a call with double matrices then stops at a static_assert saying so).
template <class FeatureMap, class PositionalEncoding = positional::none,
          class Scalar = typename detail::scalar_of<PositionalEncoding, FeatureMap>::type>
class linear_attention {
    static_assert(std::is_floating_point<Scalar>::value, "linear_attention needs a floating-point Scalar (float or double).");
    static_assert(detail::is_feature_map_v<FeatureMap, Scalar>,
                  "FeatureMap must provide `static constexpr bool is_positive`, `index output_dim(index) const` and "
                  "`void apply(const Eigen::Ref<const row_matrix<S>>&, Eigen::Ref<row_matrix<S>>, const feature_context&) const`.");
    static_assert(detail::is_positional_encoding_v<PositionalEncoding, Scalar>,
                  "PositionalEncoding must provide `has_pre_feature`, `has_post_feature`, `has_mixing`, "
                  "`bool preserves_positivity(index) const`, and the hooks of every stage it declares: "
                  "pre_output_dim/encode_pre, post_output_dim/encode_post, mixing_weights<S>(head, t_first, t_last).");

public:
    using feature_map_type = FeatureMap;
    using positional_encoding_type = PositionalEncoding;
    using scalar_type = Scalar;
    using matrix = row_matrix<Scalar>;
    using const_ref = Eigen::Ref<const matrix>;
    using ref = Eigen::Ref<matrix>;
    using options_type = options<Scalar>;
    /// The gradients of the encoding's learnable parameters (linrpe::no_parameters when it has none).
    using parameter_gradients = typename detail::parameter_gradients_of<PositionalEncoding>::type;

    explicit linear_attention(FeatureMap feature_map = FeatureMap(), PositionalEncoding encoding = PositionalEncoding(),
                              options_type opt = options_type())
        : m_map(std::move(feature_map)), m_pe(std::move(encoding)), m_opt(opt)
    {
        validate_options(m_opt);
        check_sum_possible(m_opt);
    }

    const FeatureMap& feature_map() const { return m_map; }
    FeatureMap& feature_map() { return m_map; }
    const PositionalEncoding& positional() const { return m_pe; }
    PositionalEncoding& positional() { return m_pe; }
    const options_type& opts() const { return m_opt; }
    void set_options(const options_type& opt)
    {
        validate_options(opt);
        check_sum_possible(opt);
        m_opt = opt;
    }

    /// Width R of the rows φ receives (D unless the encoding has a pre-feature stage).
    index feature_input_dim(index input_dim) const
    {
        if constexpr (PositionalEncoding::has_pre_feature) return m_pe.pre_output_dim(input_dim);
        else return input_dim;
    }
    /// Width M' of ψ and κ.
    index encoded_dim(index input_dim) const
    {
        const index m = m_map.output_dim(feature_input_dim(input_dim));
        if constexpr (PositionalEncoding::has_post_feature) return m_pe.post_output_dim(m);
        else return m;
    }

    /// \brief The algorithm forward() runs for `head` when the encoding mixes the sequence (toeplitz_rpe):
    /// options::toeplitz when forced, else the one `automatic` resolves to for a call with N = `rows`
    /// queries at q_first.., Nk = `cols` keys at k_first.., input width D and value width E. Without
    /// sequence mixing (or with no keys) it returns options::toeplitz, which is then unused. The decoder
    /// always runs options::toeplitz as given (automatic resolves per step).
    toeplitz_algorithm toeplitz_choice(index rows, index cols, index input_dim, index value_dim, index head = 0,
                                       index q_first = 0, index k_first = 0) const
    {
        detail::require_non_negative("toeplitz_choice rows", rows);
        detail::require_non_negative("toeplitz_choice cols", cols);
        detail::require_non_negative("toeplitz_choice input_dim", input_dim);
        detail::require_non_negative("toeplitz_choice value_dim", value_dim);
        validate_head(rows, input_dim, cols, input_dim, cols, value_dim, head, q_first, k_first);
        if constexpr (PositionalEncoding::has_mixing) {
            if (rows == 0 || cols == 0) return m_opt.toeplitz;
            const auto w = call_weights(head, rows, cols, q_first, k_first, false);
            const index ex = value_dim + (m_opt.norm == normalization::sum ? 1 : 0);
            return detail::toeplitz_resolve<Scalar>(m_opt.toeplitz, w, rows, cols, encoded_dim(input_dim), ex,
                                                    k_first - q_first, m_opt.mask == masking::causal);
        } else {
            return m_opt.toeplitz;
        }
    }

    /// \brief Single head: returns out (N, E) for Q (N, D), K (Nk, D), V (Nk, E); queries and keys start
    /// at absolute position `first_position`.
    matrix operator()(const const_ref& q, const const_ref& k, const const_ref& v, index head = 0,
                      index first_position = 0) const
    {
        matrix out(q.rows(), v.cols());
        forward(q, k, v, out, head, first_position, first_position);
        return out;
    }

    /// Single head into `out` (N, E), queries at q_first.., keys at k_first..; throws before writing.
    void forward(const const_ref& q, const const_ref& k, const const_ref& v, ref out, index head = 0,
                 index q_first = 0) const
    {
        forward(q, k, v, out, head, q_first, q_first);
    }
    void forward(const const_ref& q, const const_ref& k, const const_ref& v, ref out, index head, index q_first,
                 index k_first) const
    {
        typename detail::workspace_pool<Scalar>::lease lease(m_pool);
        forward(q, k, v, out, head, q_first, k_first, lease.get());
    }
    /// The same with the caller's workspace (one call at a time per workspace; see linrpe::workspace).
    void forward(const const_ref& q, const const_ref& k, const const_ref& v, ref out, index head, index q_first,
                 index k_first, workspace<Scalar>& ws) const
    {
        validate_head(q.rows(), q.cols(), k.rows(), k.cols(), v.rows(), v.cols(), head, q_first, k_first);
        if (out.rows() != q.rows() || out.cols() != v.cols())
            detail::fail("out shape", detail::shape(q.rows(), v.cols()), detail::shape(out.rows(), out.cols()));
        const detail::footprint o = detail::footprint_of(out);
        detail::require_disjoint("out", o, "q", detail::footprint_of(q));
        detail::require_disjoint("out", o, "k", detail::footprint_of(k));
        detail::require_disjoint("out", o, "v", detail::footprint_of(v));
        const detail::serial_eigen_scope serial_eigen;
        ws.prepare(call_slots(m_opt.threads));
        run_head(q, k, v, out, head, q_first, k_first, nullptr, 1, &ws);
    }

    /// \brief Batched: q (B, H, N, D), k (B, H, Nk, D), v (B, H, Nk, E), out (B, H, N, E) as strided views
    /// (either memory layout). Threads over B·H; the result does not depend on the thread count.
    void forward(tensor_view<const Scalar> q, tensor_view<const Scalar> k, tensor_view<const Scalar> v,
                 tensor_view<Scalar> out, index first_position = 0) const
    {
        typename detail::workspace_pool<Scalar>::lease lease(m_pool);
        forward(q, k, v, out, first_position, lease.get());
    }
    /// The same with the caller's workspace (one call at a time per workspace; see linrpe::workspace).
    void forward(tensor_view<const Scalar> q, tensor_view<const Scalar> k, tensor_view<const Scalar> v,
                 tensor_view<Scalar> out, index first_position, workspace<Scalar>& ws) const
    {
        validate_batch(q, k, v, out, first_position);
        const detail::serial_eigen_scope serial_eigen;
        const index heads = q.heads();
        ws.prepare(call_slots(m_opt.threads));
        detail::parallel_for(
            q.batch() * heads, head_threads(q.batch() * heads, q.tokens()),
            [&](index bh) {
                const index b = bh / heads, h = bh % heads;
                run_head(q.slice(b, h), k.slice(b, h), v.slice(b, h), out.slice(b, h), h, first_position, first_position,
                         nullptr, q.batch() * heads, &ws);
            },
            head_work(q.tokens(), k.tokens(), q.channels(), v.channels()));
    }

    /// Bytes of scratch the attention keeps between calls that pass no workspace (its own workspace).
    std::size_t workspace_bytes() const { return m_pool.own().capacity_bytes(); }
    /// Frees the attention's own workspace; call it while no call on this object runs.
    void release_workspace() { m_pool.own().release(); }

    /// Calls with matrices or views of another scalar: a compile-time error that names the cause.
    template <class... Args, std::enable_if_t<detail::has_foreign_scalar_v<Scalar, Args...>, int> = 0>
    matrix operator()(const Args&...) const
    {
        reject_foreign_scalar<Args...>();
        return {};
    }
    template <class... Args, std::enable_if_t<detail::has_foreign_scalar_v<Scalar, Args...>, int> = 0>
    void forward(const Args&...) const
    {
        reject_foreign_scalar<Args...>();
    }

    /// \brief ψ (role::query) or κ (role::key) of the rows `x` at positions first_position.. for `head`,
    /// exactly as forward() computes them for a whole sequence: the input of the exact references.
    matrix features(const const_ref& x, role which, index head = 0, index first_position = 0) const
    {
        if (head < 0) detail::fail("head", "a value >= 0", head);
        require_positions("first_position", first_position, x.rows());
        detail::check_input_if_any(m_map, feature_input_dim(x.cols()), head);
        detail::check_input_if_any(m_pe, x.cols(), head);
        check_post_feature_dim(x.cols(), head);
        detail::check_positions_if_any(m_pe, first_position, x.rows());
        const detail::serial_eigen_scope serial_eigen;
        return encode(x, which, head, first_position);
    }

    /// \brief VJP of features(): dx (n, D) = J(x)ᵀ dfeat for the cotangent dfeat (n, M') of ψ or κ of the rows
    /// x at positions first_position.. (J_i = ∂feat_i/∂x_i = post_i'·φ'·pre_i'). The features are recomputed;
    /// when `pg` is given, head `head`'s parameter gradient Σ_i (∂feat_i/∂θ)ᵀ dfeat_i is ADDED to it.
    /// Cost O(n·D·M') (an encoding's VJP hook may add its own, e.g. SPE's O(n·D·K·R)). Throws before writing;
    /// dx must not overlap x or dfeat.
    void features_backward(const const_ref& x, role which, index head, index first_position, const const_ref& dfeat,
                           ref dx, parameter_gradients* pg = nullptr) const
    {
        const index m = encoded_dim(x.cols());
        matrix feat = features(x, which, head, first_position); // validates x, head, positions: (n, M')
        if (dfeat.rows() != x.rows() || dfeat.cols() != m)
            detail::fail("dfeat shape", detail::shape(x.rows(), m), detail::shape(dfeat.rows(), dfeat.cols()));
        if (dx.rows() != x.rows() || dx.cols() != x.cols())
            detail::fail("dx shape", detail::shape(x.rows(), x.cols()), detail::shape(dx.rows(), dx.cols()));
        detail::require_disjoint("dx", detail::footprint_of(dx), "x", detail::footprint_of(x));
        detail::require_disjoint("dx", detail::footprint_of(dx), "dfeat", detail::footprint_of(dfeat));
        validate_gradients(pg);
        const detail::serial_eigen_scope serial_eigen;
        detail::arena<Scalar> scratch;
        std::vector<double> flat(static_cast<std::size_t>(pg ? gradient_size() : 0), 0.0);
        encode_backward(x, feat, dfeat, dx, which, head, first_position, flat.empty() ? nullptr : flat.data(), scratch);
        if (!flat.empty()) add_gradients(head, flat.data(), *pg);
    }

    /// \brief The explicit mixing weights W (N, Nk) that forward() applies to a call of `rows` queries from
    /// q_first and `cols` keys from k_first: the causal mask and, for a sequence-mixing encoding, c_{j−i} =
    /// exp(b_{j−i}) exactly. forward() reaches the same result through a shift (so it stays finite where an
    /// entry of W overflows Scalar).
    matrix mixing_matrix(index rows, index cols, index head = 0, index q_first = 0, index k_first = 0) const
    {
        detail::require_non_negative("mixing_matrix rows", rows);
        detail::require_non_negative("mixing_matrix cols", cols);
        if (head < 0) detail::fail("head", "a value >= 0", head);
        require_positions("first_position", q_first, rows);
        require_positions("key first_position", k_first, cols);
        matrix w = matrix::Ones(rows, cols);
        if constexpr (PositionalEncoding::has_mixing) {
            const auto c = call_weights(head, rows, cols, q_first, k_first, false);
            const long double scale = std::exp(static_cast<long double>(c.shift));
            for (index i = 0; i < rows; ++i)
                for (index j = 0; j < cols; ++j)
                    w(i, j) = static_cast<Scalar>(static_cast<long double>(c.at((k_first + j) - (q_first + i))) * scale);
        }
        if (m_opt.mask == masking::causal) // key k_first + j after query q_first + i
            for (index i = 0; i < rows; ++i)
                for (index j = 0; j < cols; ++j)
                    if (j - i > q_first - k_first) w(i, j) = Scalar(0);
        return w;
    }

    /// \brief A streaming decoder for `batch` sequences of `heads` heads (needs masking::causal).
    ///
    /// The decoder keeps its own snapshot (a copy) of this attention, taken here: it may outlive this
    /// object, and later changes to its parameters, options or realization (set_options, redraw, loading
    /// weights) do not reach a live decoder; create a new decoder to use them.
    linrpe::decoder<linear_attention> decoder(index batch = 1, index heads = 1) const
    {
        return linrpe::decoder<linear_attention>(*this, batch, heads);
    }

    // ---- backward (docs/design.md §16) -----------------------------------------------------------------------

    /// \brief Zeroed gradients of the encoding's learnable parameters, with their shapes (docs/design.md §16).
    parameter_gradients make_parameter_gradients() const
    {
        if constexpr (detail::has_parameters<PositionalEncoding>::value)
            return m_pe.make_parameter_gradients();
        else
            return parameter_gradients{};
    }

    /// \brief Single head: the gradients dq (N, D), dk (Nk, D), dv (Nk, E) of ⟨dout, forward(q, k, v)⟩ for the
    /// seed dout (N, E), of the function forward() computes (FAVOR+'s query shift included), exact to
    /// rounding. Features are recomputed, nothing is kept from the forward: non-causal in four GEMMs per
    /// head, causal by prefix states (dq) and suffix states (dk, dv) in the chunked GEMM form; extra memory
    /// O((N + Nk)·(M' + E)) per head in flight, taken from `ws` (a temporary one when null; pass one to a
    /// loop of calls so that nothing is allocated after the first). When `pg` is given, the gradients of
    /// the encoding's learnable parameters (head `head`'s part) are ADDED to it, as a training framework
    /// accumulates .grad: zero it with make_parameter_gradients() once per optimizer step. Throws before
    /// writing anything. Outputs must not alias inputs. Needs the feature map's `apply_backward` hook and
    /// the encoding's VJP hooks (docs/design.md §16).
    void backward(const const_ref& q, const const_ref& k, const const_ref& v, const const_ref& dout, ref dq, ref dk,
                  ref dv, index head = 0, index q_first = 0) const
    {
        backward(q, k, v, dout, dq, dk, dv, head, q_first, q_first);
    }
    void backward(const const_ref& q, const const_ref& k, const const_ref& v, const const_ref& dout, ref dq, ref dk,
                  ref dv, index head, index q_first, index k_first, workspace<Scalar>* ws = nullptr,
                  parameter_gradients* pg = nullptr) const
    {
        validate_head(q.rows(), q.cols(), k.rows(), k.cols(), v.rows(), v.cols(), head, q_first, k_first);
        const auto check = [](const char* name, index rows, index cols, index r, index c) {
            if (r != rows || c != cols) detail::fail(name, detail::shape(rows, cols), detail::shape(r, c));
        };
        check("dout shape", q.rows(), v.cols(), dout.rows(), dout.cols());
        check("dq shape", q.rows(), q.cols(), dq.rows(), dq.cols());
        check("dk shape", k.rows(), k.cols(), dk.rows(), dk.cols());
        check("dv shape", v.rows(), v.cols(), dv.rows(), dv.cols());
        validate_gradients(pg);
        const detail::serial_eigen_scope serial_eigen;
        std::optional<typename detail::workspace_pool<Scalar>::lease> lease;
        if (!ws) ws = &lease.emplace(m_pool).get(); // the attention's own workspace, as for forward()
        ws->prepare(call_slots(m_opt.threads));
        const index p = pg ? gradient_size() : 0;
        std::vector<double> flat(static_cast<std::size_t>(p), 0.0);
        run_head_backward(q, k, v, dout, dq, dk, dv, head, q_first, k_first, 1, *ws, p > 0 ? flat.data() : nullptr);
        if (p > 0) add_gradients(head, flat.data(), *pg);
    }

    /// \brief Batched backward over strided views (either memory layout): q, dq (B, H, N, D), k, dk
    /// (B, H, Nk, D), v, dv (B, H, Nk, E), dout (B, H, N, E). Threads and segments as the batched forward;
    /// parameter gradients (added to `pg` when given) are summed over the batch in batch order. The result
    /// does not depend on the thread count.
    void backward(tensor_view<const Scalar> q, tensor_view<const Scalar> k, tensor_view<const Scalar> v,
                  tensor_view<const Scalar> dout, tensor_view<Scalar> dq, tensor_view<Scalar> dk, tensor_view<Scalar> dv,
                  index first_position = 0, workspace<Scalar>* ws = nullptr, parameter_gradients* pg = nullptr) const
    {
        validate_backward_views(q, k, v, dout, dq, dk, dv, first_position);
        validate_gradients(pg);
        backward_items(q, k, v, dout, dq, dk, dv, ws, pg, [first_position](index, index) {
            return backward_item{first_position, nullptr, nullptr, nullptr};
        });
    }

    // ---- State passing, per-sequence positions, key lengths, packed variable lengths (docs/design.md §8) ----

    /// The state type of this attention's causal calls (see linrpe::attention_state).
    using state_type = linrpe::attention_state<linear_attention>;
    /// Empty state slots at position 0 for `batch` sequences of `heads` heads.
    state_type make_state(index batch, index heads) const { return state_type(batch, heads); }

    /// \brief Causal, batched, continuing `state`: sequence b, head h starts at the slot's position from its
    /// S (or Toeplitz window) and the slot is left after the call's tokens. k calls over consecutive pieces
    /// equal one call to rounding; cost as forward(). Throws (state and out untouched) on a state of other
    /// batch, heads or (M', E).
    void forward(tensor_view<const Scalar> q, tensor_view<const Scalar> k, tensor_view<const Scalar> v,
                 tensor_view<Scalar> out, state_type& state) const
    {
        typename detail::workspace_pool<Scalar>::lease lease(m_pool);
        detail::sequence_calls<linear_attention>::forward_state(*this, q, k, v, out, state, nullptr, lease.get());
    }
    /// \brief Backward of forward(q, k, v, out, state) (docs/design.md §16): `initial` is the state the call
    /// started from (a copy kept before the call) and `final_grad`, when given, the gradient w.r.t. the state
    /// the call left (from the backward of the calls that continued it; null: the final state was not used).
    /// Writes dq, dk, dv as backward() and sets `initial_grad` (batch × heads like `initial`, positions copied
    /// from it) to the gradient w.r.t. the initial state: dS0 = dS_final + Σ_i ψ_i [g_i, g_den,i]ᵀ per slot.
    /// So a sequence run in k calls is differentiated by k calls in reverse order, each passing its
    /// `initial_grad` as the `final_grad` of the call before, and equals one call's backward to rounding.
    /// S0 enters as keys before the call: the prefix states start at S0, the suffix states at dS_final; the
    /// cost is backward()'s. `initial_grad` may be the same object as `final_grad`. Throws (outputs and
    /// `initial_grad` untouched) on a state of another batch, heads or (M', E), or a non-causal attention.
    /// Toeplitz encodings: a slot is the window of the last ≤ T_max tokens' κ and [v, 1] plus the far state,
    /// and so is its gradient (d κ, d vx of the history rows, d far); the new queries are differentiated
    /// against [history; new keys] by the forward's algorithm with the forward's offsets and shift, the far
    /// term c_far ψ far and the eviction into far (linear) chain into d far and the rows they came from,
    /// and the final history's gradient flows back to the rows it holds. Parameter gradients include the
    /// pairs with history keys and the far term's clipped offset. A `final_grad` slot must then hold the
    /// history length the call leaves, min(history + N, T_max).
    void backward(tensor_view<const Scalar> q, tensor_view<const Scalar> k, tensor_view<const Scalar> v,
                  tensor_view<const Scalar> dout, tensor_view<Scalar> dq, tensor_view<Scalar> dk, tensor_view<Scalar> dv,
                  const state_type& initial, state_type& initial_grad, const state_type* final_grad = nullptr,
                  workspace<Scalar>* ws = nullptr, parameter_gradients* pg = nullptr) const
    {
        validate_backward_views(q, k, v, dout, dq, dk, dv, 0);
        validate_gradients(pg);
        detail::sequence_calls<linear_attention>::backward_state(*this, q, k, v, dout, dq, dk, dv, initial, initial_grad,
                                                                 final_grad, ws, pg);
    }
    /// Batched with per-sequence first positions (size B; queries and keys of sequence b start at first[b]).
    void forward_positions(tensor_view<const Scalar> q, tensor_view<const Scalar> k, tensor_view<const Scalar> v,
                           tensor_view<Scalar> out, const std::vector<index>& first_positions) const
    {
        typename detail::workspace_pool<Scalar>::lease lease(m_pool);
        detail::sequence_calls<linear_attention>::forward_sequences(*this, q, k, v, out, first_positions, nullptr, lease.get());
    }
    /// \brief Non-causal, batched, with padding: sequence b has `key_lengths[b]` valid keys (the first rows);
    /// the others enter neither numerator nor denominator. Optional per-sequence first positions.
    void forward_key_lengths(tensor_view<const Scalar> q, tensor_view<const Scalar> k, tensor_view<const Scalar> v,
                             tensor_view<Scalar> out, const std::vector<index>& key_lengths,
                             const std::vector<index>& first_positions = {}) const
    {
        typename detail::workspace_pool<Scalar>::lease lease(m_pool);
        detail::sequence_calls<linear_attention>::forward_sequences(*this, q, k, v, out, first_positions, &key_lengths,
                                                                    lease.get());
    }
    /// \brief Packed variable lengths: q, k (1, H, T, D), v (1, H, T, E), out (1, H, T, E) hold B sequences
    /// back to back, sequence b in token rows [cu_seqlens[b], cu_seqlens[b+1]) (B + 1 offsets, cu[0] = 0,
    /// cu[B] = T), each attending only to itself, causal or not, from position first_positions[b] (0 when
    /// empty). Equals B separate calls; no padding is computed.
    void forward_packed(tensor_view<const Scalar> q, tensor_view<const Scalar> k, tensor_view<const Scalar> v,
                        tensor_view<Scalar> out, const std::vector<index>& cu_seqlens,
                        const std::vector<index>& first_positions = {}) const
    {
        typename detail::workspace_pool<Scalar>::lease lease(m_pool);
        detail::sequence_calls<linear_attention>::forward_packed(*this, q, k, v, out, cu_seqlens, first_positions, lease.get());
    }
    /// \brief Packed variable lengths continuing `state` (causal): sequence b of the packed views (rows
    /// [cu_seqlens[b], cu_seqlens[b+1])) continues slot b of `state` (batch B) from its position, and the slot
    /// is left after its tokens. Equals one forward(…, state) per sequence; throws (state and out untouched)
    /// as both.
    void forward_packed(tensor_view<const Scalar> q, tensor_view<const Scalar> k, tensor_view<const Scalar> v,
                        tensor_view<Scalar> out, const std::vector<index>& cu_seqlens, state_type& state) const
    {
        typename detail::workspace_pool<Scalar>::lease lease(m_pool);
        detail::sequence_calls<linear_attention>::forward_packed_state(*this, q, k, v, out, cu_seqlens, state, nullptr,
                                                                       lease.get());
    }

private:
    friend class linrpe::decoder<linear_attention>;
    friend class linrpe::attention_state<linear_attention>;
    friend struct detail::sequence_calls<linear_attention>;

    // Per-sequence decoder state: S = Σ κ vxᵀ without mixing weights; band history + far state with them.
    using causal_stream = detail::causal_state<Scalar>;
    using stream_state = std::conditional_t<PositionalEncoding::has_mixing, detail::toeplitz_stream<Scalar>, causal_stream>;

    // The encoding's weights for one call, shifted by the max b over the offsets it can see.
    template <class P = PositionalEncoding, std::enable_if_t<P::has_mixing, int> = 0>
    auto call_weights(index head, index n, index nk, index q_first, index k_first, bool streaming) const
    {
        const auto [first, last] =
            detail::visible_offsets(n, nk, q_first, k_first, m_opt.mask == masking::causal, streaming);
        return m_pe.template mixing_weights<Scalar>(head, first, last);
    }

    template <class... Args>
    static void reject_foreign_scalar()
    {
        static_assert(detail::dependent_false<Args...>,
                      "linear_attention: the matrices or views have another scalar than the attention's Scalar. "
                      "linear_attention<F, P> computes in P's (or F's) scalar_type, else float: for double write "
                      "linear_attention<F, positional::none, double> (or convert the inputs).");
    }

    // Positions first .. first + count − 1 must lie in [0, max_position).
    static void require_positions(const char* argument, index first, index count)
    {
        if (first < 0) detail::fail(argument, "a value >= 0", first);
        if (first > max_position - count)
            detail::fail(argument, detail::concat("a value <= ", max_position, " - ", count, " (positions below 2^53)"), first);
    }

    static void validate_options(const options_type& opt)
    {
        if (opt.mask != masking::none && opt.mask != masking::causal)
            detail::fail("options.mask", "masking::none or masking::causal", static_cast<int>(opt.mask));
        if (opt.norm != normalization::sum && opt.norm != normalization::none && opt.norm != normalization::rms)
            detail::fail("options.norm", "normalization::sum, none or rms", static_cast<int>(opt.norm));
        if (opt.toeplitz != toeplitz_algorithm::automatic && opt.toeplitz != toeplitz_algorithm::dense &&
            opt.toeplitz != toeplitz_algorithm::fft && opt.toeplitz != toeplitz_algorithm::banded)
            detail::fail("options.toeplitz", "toeplitz_algorithm::automatic, dense, fft or banded", static_cast<int>(opt.toeplitz));
        if (!(opt.eps > Scalar(0)) || !std::isfinite(static_cast<double>(opt.eps)))
            detail::fail("options.eps", "a finite value > 0", opt.eps);
        if (opt.chunk_size < 1 || opt.chunk_size > options_type::max_chunk_size)
            detail::fail("options.chunk_size", detail::concat("a value in [1, ", options_type::max_chunk_size, "]"), opt.chunk_size);
        if (opt.segment_rows < 1) detail::fail("options.segment_rows", "a value >= 1", opt.segment_rows);
        if (opt.threads < 0) detail::fail("options.threads", "a value >= 0 (0 = OpenMP default)", opt.threads);
        if (opt.norm == normalization::sum && !FeatureMap::is_positive && !opt.allow_signed_normalizer)
            detail::fail("options.norm", "normalization::rms or none for a feature map with signed features "
                                         "(or set allow_signed_normalizer: sum can divide by ~0)", "normalization::sum");
    }

    // `sum` with an encoding that can never keep scores >= 0 (e.g. LRPE rotate): refused here, not per call.
    void check_sum_possible(const options_type& opt) const
    {
        if (opt.norm == normalization::sum && !opt.allow_signed_normalizer && !detail::positivity_possible_if_any(m_pe))
            detail::fail("options.norm", "normalization::rms or none: this positional encoding can make scores negative "
                                         "(or set allow_signed_normalizer)", "normalization::sum");
    }

    void validate_head(index n, index d, index nk, index dk, index nv, index /*e*/, index head, index q_first,
                       index k_first) const
    {
        if (dk != d) detail::fail("k columns (key width must equal query width)", d, dk);
        if (nv != nk) detail::fail("v rows (values must match keys)", nk, nv);
        if (head < 0) detail::fail("head", "a value >= 0", head);
        require_positions("first_position", q_first, n);
        require_positions("key first_position", k_first, nk);
        if (m_opt.mask == masking::causal) {
            if (nk != n) detail::fail("k rows (causal attention needs as many keys as queries)", n, nk);
            if (k_first != q_first) detail::fail("key first_position (causal: same as queries)", q_first, k_first);
        }
        detail::check_input_if_any(m_pe, d, head);
        detail::check_input_if_any(m_map, feature_input_dim(d), head);
        check_post_feature_dim(d, head);
        detail::check_positions_if_any(m_pe, q_first, n);
        detail::check_positions_if_any(m_pe, k_first, nk);
        if (m_opt.norm == normalization::sum && !m_opt.allow_signed_normalizer && n > 0 && nk > 0) {
            const index max_offset = std::max(std::abs((k_first + nk - 1) - q_first), std::abs((q_first + n - 1) - k_first));
            if (!m_pe.preserves_positivity(max_offset))
                detail::fail("options.norm", detail::concat("normalization::rms or none: this positional encoding can make scores "
                                                            "negative at offsets up to ", max_offset,
                                                            " (or set allow_signed_normalizer)"),
                             "normalization::sum");
        }
    }

    void validate_batch(const tensor_view<const Scalar>& q, const tensor_view<const Scalar>& k,
                        const tensor_view<const Scalar>& v, const tensor_view<Scalar>& out, index first_position) const
    {
        q.validate("q view");
        k.validate("k view");
        v.validate("v view");
        out.validate("out view");
        out.validate_distinct("out view");
        const detail::footprint o = detail::footprint_of(out);
        detail::require_disjoint("out view", o, "q view", detail::footprint_of(q));
        detail::require_disjoint("out view", o, "k view", detail::footprint_of(k));
        detail::require_disjoint("out view", o, "v view", detail::footprint_of(v));
        const auto dims = [](index a, index b, index c, index d) { return detail::concat("(", a, ", ", b, ", ", c, ", ", d, ")"); };
        if (k.batch() != q.batch() || k.heads() != q.heads())
            detail::fail("k view extents", dims(q.batch(), q.heads(), k.tokens(), q.channels()), dims(k.batch(), k.heads(), k.tokens(), k.channels()));
        if (v.batch() != q.batch() || v.heads() != q.heads())
            detail::fail("v view extents", dims(q.batch(), q.heads(), k.tokens(), v.channels()), dims(v.batch(), v.heads(), v.tokens(), v.channels()));
        if (out.batch() != q.batch() || out.heads() != q.heads() || out.tokens() != q.tokens() || out.channels() != v.channels())
            detail::fail("out view extents", dims(q.batch(), q.heads(), q.tokens(), v.channels()),
                         dims(out.batch(), out.heads(), out.tokens(), out.channels()));
        const auto head_call = [&](index h) {
            validate_head(q.tokens(), q.channels(), k.tokens(), k.channels(), v.tokens(), v.channels(), h, first_position,
                          first_position);
        };
        if (q.heads() > 0) head_call(0);
        // Head 0 passed every check that does not depend on the head: a later failure is about the views'
        // head count (more heads than the encoding or feature map holds) or that head's parameters.
        for (index h = 1; h < q.heads(); ++h) {
            try {
                head_call(h);
            } catch (const error& e) {
                detail::fail("q view heads", detail::concat("heads the encoding and feature map accept (head ", h,
                                                            " is refused: ", e.what(), ")"),
                             q.heads());
            }
        }
    }

    // A post-feature encoding is told the width φ produces (only the core knows it).
    void check_post_feature_dim(index input_dim, index head) const
    {
        if constexpr (PositionalEncoding::has_post_feature)
            detail::check_feature_dim_if_any(m_pe, m_map.output_dim(feature_input_dim(input_dim)), head);
        else (void)input_dim, (void)head;
    }

    feature_context context(role which, index head) const
    {
        feature_context ctx;
        ctx.which = which;
        ctx.head = head;
        ctx.row_scale_cancels = m_opt.norm == normalization::sum;
        return ctx;
    }

    // pre-feature stage → φ → post-feature stage, for rows at positions first.. (no validation).
    matrix encode(const const_ref& x, role which, index head, index first) const
    {
        const feature_context ctx = context(which, head);
        const index n = x.rows();
        const index r = feature_input_dim(x.cols());
        matrix phi(n, m_map.output_dim(r));
        if constexpr (PositionalEncoding::has_pre_feature) {
            matrix u(n, r); // (n, R)
            m_pe.encode_pre(x, ref(u), first, head, which);
            m_map.apply(const_ref(u), ref(phi), ctx);
        } else {
            m_map.apply(x, ref(phi), ctx);
        }
        if constexpr (PositionalEncoding::has_post_feature) {
            matrix psi(n, m_pe.post_output_dim(phi.cols())); // (n, M')
            m_pe.encode_post(const_ref(phi), ref(psi), first, head, which);
            return psi;
        } else {
            return phi;
        }
    }

    // encode() into `out` (n, M'), with the intermediate stages in the arena; with `keep` (n, M) and a
    // post-feature stage, φ is written there (the backward's encode_backward then reads it, not an exp again).
    void encode_into(const const_ref& x, role which, index head, index first, ref out, detail::arena<Scalar>& a,
                     ref* keep = nullptr) const
    {
        const feature_context ctx = context(which, head);
        const index n = x.rows();
        const index r = feature_input_dim(x.cols());
        detail::scratch_scope<Scalar> tmp(a);
        const auto features = [&](ref phi) {
            if constexpr (PositionalEncoding::has_pre_feature) {
                auto u = tmp.matrix(n, r); // (n, R)
                m_pe.encode_pre(x, ref(u), first, head, which);
                m_map.apply(const_ref(u), phi, ctx);
            } else {
                m_map.apply(x, phi, ctx);
            }
        };
        if constexpr (PositionalEncoding::has_post_feature) {
            if (keep && keep->rows() == n) {
                features(*keep);
                m_pe.encode_post(const_ref(*keep), out, first, head, which);
                return;
            }
            auto phi = tmp.matrix(n, m_map.output_dim(r)); // (n, M)
            features(ref(phi));
            m_pe.encode_post(const_ref(phi), out, first, head, which);
        } else {
            features(out);
        }
    }

    // Arenas a call needs: one per thread of its team, and the caller's own slot when it already runs in
    // an OpenMP team of its own.
    static int call_slots(int threads)
    {
        return static_cast<int>(std::max<index>(detail::thread_slot() + 1, detail::concurrent_items(1 << 20, threads)));
    }

    // Validated inputs → out. With `state` (decoder), causal mixing continues from and updates it.
    // `call_heads` is the number of (batch, head) sequences of the call (it selects the causal threading).
    // Scratch comes from `ws` (prepared for the call's team), or from a temporary workspace without one.
    void run_head(const const_ref& q, const const_ref& k, const const_ref& v, ref out, index head, index q_first,
                  index k_first, stream_state* state, index call_heads, workspace<Scalar>* ws = nullptr) const
    {
        if (q.rows() == 0) return;
        workspace<Scalar> temporary;
        if (!ws) {
            temporary.prepare(call_slots(m_opt.threads));
            ws = &temporary;
        }
        const bool causal = m_opt.mask == masking::causal;
        if constexpr (!PositionalEncoding::has_mixing) {
            if (causal)
                detail::causal_forward<Scalar>(q, k, v, out, q_first, state, splits_sequence(call_heads, q.rows()),
                                               causal_setup(q.cols(), q.rows()), *ws, encoder_into(head), normalizer());
            else
                detail::noncausal_forward<Scalar>(q, k, v, out, q_first, k_first, setup(q.cols()), *ws,
                                                  encoder_into(head), normalizer());
        } else {
            const auto w = call_weights(head, q.rows(), k.rows(), q_first, k_first, state != nullptr);
            // Kernels run with c = e^{−shift}·(true weights); the normalization folds e^{shift} back.
            const auto fold = [this, shift = w.shift](ref o, const vector<Scalar>* den) {
                detail::toeplitz_normalize<Scalar>(o, den, m_opt.norm, m_opt.eps, shift);
            };
            const index ex = v.cols() + (m_opt.norm == normalization::sum ? 1 : 0);
            // Resolved once here (O(N + Nk) for `automatic`) and passed down forced, so toeplitz_mix does not
            // evaluate the cost model a second time.
            const toeplitz_algorithm algo =
                state || k.rows() == 0 ? m_opt.toeplitz
                                       : detail::toeplitz_resolve<Scalar>(m_opt.toeplitz, w, q.rows(), k.rows(),
                                                                          encoded_dim(q.cols()), ex, k_first - q_first, causal);
            if (!state && k.rows() > 0 && algo == toeplitz_algorithm::banded) {
                detail::toeplitz_segments_forward<Scalar>(q, k, v, out, q_first, k_first, w, causal,
                                                          splits_sequence(call_heads, q.rows()), setup(q.cols()),
                                                          encoder(head), fold);
                return;
            }
            const index n = q.rows(), nk = k.rows(), e = v.cols();
            const matrix psi = encode(q, role::query, head, q_first); // (N, M')
            const matrix kappa = encode(k, role::key, head, k_first); // (Nk, M')
            const bool with_den = m_opt.norm == normalization::sum;
            // Vx = [V, 1]: the denominator rides along as one more value column of the same products.
            matrix vx(nk, with_den ? e + 1 : e); // (Nk, Ex)
            vx.leftCols(e) = v;
            if (with_den) vx.col(e).setOnes();
            matrix num(n, vx.cols()); // (N, Ex)
            if (state) state->mix(w, psi, kappa, vx, num, q_first, m_opt.toeplitz);
            else detail::toeplitz_mix<Scalar>(w, psi, kappa, vx, num, q_first, k_first, causal, algo, m_opt.threads);
            out = num.leftCols(e);
            vector<Scalar> den = with_den ? vector<Scalar>(num.col(e)) : vector<Scalar>();
            fold(out, with_den ? &den : nullptr);
        }
    }

    /// Calls with fewer than this many (batch, head) sequences split a causal or Toeplitz head longer than
    /// options::segment_rows into segments that run in parallel; otherwise threads take whole heads. The
    /// choice depends on the shape only, never on the thread count, so results stay thread-independent.
    static constexpr index sequence_parallel_below = 8;

    // Whether each head of n tokens in a call of `call_heads` sequences takes the threads itself, so that the
    // loop over heads runs serially: causal heads then run their segments in parallel, and Toeplitz heads of
    // either mask too (banded by segments; the dense and FFT mixers thread inside any head).
    bool splits_sequence(index call_heads, index n) const
    {
        return (PositionalEncoding::has_mixing || m_opt.mask == masking::causal) && call_heads < sequence_parallel_below &&
               n > m_opt.segment_rows;
    }
    // Threads for the loop over a call's sequences: one when the segments of each sequence take them instead.
    int head_threads(index call_heads, index n) const { return splits_sequence(call_heads, n) ? 1 : m_opt.threads; }
    // Flops of one head of n queries and nk keys (D = d, E = e) without the Toeplitz band, as the threading
    // threshold of parallel_for sees them: features ~2·D·M' and state or output ~2·M'·(E + 1) per row.
    double head_work(index n, index nk, index d, index e) const
    {
        return 2.0 * static_cast<double>(n + nk) * static_cast<double>(encoded_dim(d)) * static_cast<double>(d + e + 1);
    }

    // What a mixer needs to know about a head call of input width d.
    detail::mixer_setup setup(index d) const
    {
        detail::mixer_setup st;
        st.m = encoded_dim(d);
        st.with_den = m_opt.norm == normalization::sum;
        st.threads = m_opt.threads;
        st.chunk = m_opt.chunk_size;
        st.segment_rows = m_opt.segment_rows;
        if constexpr (PositionalEncoding::has_post_feature && !PositionalEncoding::has_pre_feature)
            st.kept = m_map.output_dim(feature_input_dim(d));
        return st;
    }
    // A chunk longer than the call only adds O(chunk²) scratch: min(chunk, n) gives the same bits (one chunk).
    detail::mixer_setup causal_setup(index d, index n) const
    {
        detail::mixer_setup st = setup(d);
        st.chunk = std::min(st.chunk, std::max<index>(n, 1));
        return st;
    }
    // encode() bound to one head, for the mixers.
    auto encoder(index head) const
    {
        return [this, head](const const_ref& x, role which, index first) { return encode(x, which, head, first); };
    }
    // encode_into() bound to one head, for the mixers that take their scratch from a workspace.
    auto encoder_into(index head) const
    {
        return [this, head](const const_ref& x, role which, index first, ref out, detail::arena<Scalar>& a,
                            ref* keep = nullptr) { encode_into(x, which, head, first, out, a, keep); };
    }
    auto normalizer() const
    {
        return [this](ref o, const vector<Scalar>* den) { normalize(o, den); };
    }

    // The views of a batched backward: every extent, and positions from first_position (state passing
    // checks each slot's own positions after this).
    void validate_backward_views(const tensor_view<const Scalar>& q, const tensor_view<const Scalar>& k,
                                 const tensor_view<const Scalar>& v, const tensor_view<const Scalar>& dout,
                                 const tensor_view<Scalar>& dq, const tensor_view<Scalar>& dk, const tensor_view<Scalar>& dv,
                                 index first_position) const
    {
        dout.validate("dout view");
        if (dout.batch() != q.batch() || dout.heads() != q.heads() || dout.tokens() != q.tokens() || dout.channels() != v.channels())
            detail::fail("dout view extents", detail::concat("(", q.batch(), ", ", q.heads(), ", ", q.tokens(), ", ", v.channels(), ")"),
                         detail::concat("(", dout.batch(), ", ", dout.heads(), ", ", dout.tokens(), ", ", dout.channels(), ")"));
        // validate_batch reads the extents of its `out` argument only: dout (checked above) stands in for it.
        const tensor_view<Scalar> dout_extents(const_cast<Scalar*>(dout.data()), dout.batch(), dout.heads(), dout.tokens(),
                                               dout.channels(), dout.stride(0), dout.stride(1), dout.stride(2),
                                               dout.stride(3));
        validate_batch(q, k, v, dout_extents, first_position);
        const auto check = [](const char* name, const tensor_view<Scalar>& x, const tensor_view<const Scalar>& like,
                              index channels) {
            x.validate(name);
            if (x.batch() != like.batch() || x.heads() != like.heads() || x.tokens() != like.tokens() || x.channels() != channels)
                detail::fail(name, detail::concat("extents (", like.batch(), ", ", like.heads(), ", ", like.tokens(), ", ", channels, ")"),
                             detail::concat("(", x.batch(), ", ", x.heads(), ", ", x.tokens(), ", ", x.channels(), ")"));
        };
        check("dq view", dq, q, q.channels());
        check("dk view", dk, k, k.channels());
        check("dv view", dv, v, v.channels());
    }

    // One (b, h) of a batched backward: its first position and, for state passing, its states (else null).
    struct backward_item {
        index first;
        const stream_state* initial;
        const stream_state* final_grad;
        stream_state* initial_grad;
    };

    // The loop of the batched backwards over validated views: item(b, h) gives each head call's
    // backward_item. Threads and segments as the batched forward; parameter gradients summed per head in
    // batch order, whatever the schedule.
    template <class Item>
    void backward_items(const tensor_view<const Scalar>& q, const tensor_view<const Scalar>& k,
                        const tensor_view<const Scalar>& v, const tensor_view<const Scalar>& dout, const tensor_view<Scalar>& dq,
                        const tensor_view<Scalar>& dk, const tensor_view<Scalar>& dv, workspace<Scalar>* ws,
                        parameter_gradients* pg, const Item& item) const
    {
        const detail::serial_eigen_scope serial_eigen;
        std::optional<typename detail::workspace_pool<Scalar>::lease> lease;
        if (!ws) ws = &lease.emplace(m_pool).get();
        ws->prepare(call_slots(m_opt.threads));
        const index heads = q.heads(), calls = q.batch() * heads, p = pg ? gradient_size() : 0;
        std::vector<double> flat(static_cast<std::size_t>(calls * p), 0.0); // (B·H, P): one slice per call
        detail::parallel_for(
            calls, head_threads(calls, q.tokens()),
            [&](index bh) {
                const index b = bh / heads, h = bh % heads;
                const backward_item it = item(b, h);
                run_head_backward(q.slice(b, h), k.slice(b, h), v.slice(b, h), dout.slice(b, h), dq.slice(b, h),
                                  dk.slice(b, h), dv.slice(b, h), h, it.first, it.first, calls, *ws,
                                  p > 0 ? flat.data() + bh * p : nullptr, &it);
            },
            2.5 * head_work(q.tokens(), k.tokens(), q.channels(), v.channels())); // backward ≈ 2.5 forwards
        if (p == 0) return;
        std::vector<double> sum(static_cast<std::size_t>(p));
        for (index h = 0; h < heads; ++h) {
            std::fill(sum.begin(), sum.end(), 0.0);
            for (index b = 0; b < q.batch(); ++b) // batch order, whatever the schedule was
                for (index i = 0; i < p; ++i) sum[static_cast<std::size_t>(i)] += flat[static_cast<std::size_t>((b * heads + h) * p + i)];
            add_gradients(h, sum.data(), *pg);
        }
    }

    // Arenas a call needs: one per thread of the largest team it can open, and the caller's own slot.
    // Validated inputs → dq, dk, dv (docs/design.md §16); `call_heads` selects the causal threading as in run_head.
    void run_head_backward(const const_ref& q, const const_ref& k, const const_ref& v, const const_ref& dout, ref dq,
                           ref dk, ref dv, index head, index q_first, index k_first, index call_heads,
                           workspace<Scalar>& ws, double* grad, const backward_item* states = nullptr) const
    {
        static_assert(detail::has_apply_backward_v<FeatureMap, Scalar>,
                      "backward() needs the FeatureMap's VJP hook `template <class S> void apply_backward(const "
                      "Eigen::Ref<const row_matrix<S>>& x, const Eigen::Ref<const row_matrix<S>>& phi, const "
                      "Eigen::Ref<const row_matrix<S>>& dphi, Eigen::Ref<row_matrix<S>> dx, const feature_context&) "
                      "const` writing dx = J_phi(x)^T dphi (phi = apply(x)); see examples/custom_policies.cpp.");
        static_assert(detail::encoding_backward_ok<PositionalEncoding, Scalar>(),
                      "backward() needs the PositionalEncoding's VJP hooks for the stages it declares: "
                      "`encode_pre_backward(x, du, dx, first_position, head, role, double* grad)` (dx = pre^T du) "
                      "and/or `encode_post_backward(phi, dpsi, dphi, first_position, head, role, double* grad)` "
                      "(dphi = post^T dpsi), each adding its parameters' gradient to grad when not null (every shipped "
                      "encoding has them; see examples/custom_policies.cpp).");
        if (q.rows() == 0) {
            dk.setZero();
            dv.setZero();
            if (states && states->initial_grad) { // no token: S_final = S0
                if (states->final_grad && !states->final_grad->empty()) *states->initial_grad = *states->final_grad;
                else if constexpr (PositionalEncoding::has_mixing)
                    *states->initial_grad = zero_window(*states->initial, q.cols(), v.cols());
                else states->initial_grad->reset(encoded_dim(q.cols()), v.cols(), m_opt.norm == normalization::sum);
            }
            return;
        }
        // Parameter gradients: one buffer per block of rows, summed in block order after the mixer.
        std::optional<detail::gradient_blocks> blocks;
        if (grad) blocks.emplace(gradient_size());
        // Scratch of the features' VJP from the arena of the thread that runs the block (after the mixer's own
        // slices on that arena, given back in order).
        const auto back = [this, head, &blocks, &ws](const const_ref& x, const const_ref& feat, const const_ref& dfeat, ref dx,
                                                     role which, index first, const const_ref* kept = nullptr) {
            encode_backward(x, feat, dfeat, dx, which, head, first, blocks ? blocks->slot(which, first) : nullptr, ws.local(),
                            kept);
        };
        if constexpr (PositionalEncoding::has_mixing)
            mixing_backward(q, k, v, dout, dq, dk, dv, head, q_first, k_first, back, grad, states, ws);
        else if (m_opt.mask == masking::causal)
            detail::causal_backward<Scalar>(q, k, v, dout, dq, dk, dv, q_first, splits_sequence(call_heads, q.rows()),
                                            setup(q.cols()), m_opt.norm, m_opt.eps, encoder_into(head), back, ws,
                                            states ? states->initial : nullptr, states ? states->final_grad : nullptr,
                                            states ? states->initial_grad : nullptr);
        else
            detail::noncausal_backward<Scalar>(q, k, v, dout, dq, dk, dv, q_first, k_first, setup(q.cols()), m_opt.norm,
                                               m_opt.eps, encoder(head), back, ws);
        if (blocks) blocks->sum_into(grad);
    }

    // The Toeplitz branch of run_head_backward (docs/design.md §16): features recomputed for the whole head,
    // the seed and the mixing VJP by the forward's algorithm (detail::toeplitz_backward), then the features'
    // VJP by blocks of fused_block rows (the parameter-gradient blocks are keyed by their first row) and
    // ∂L/∂log c into the encoding's parameters. Extra memory O((N + Nk)·(M' + Ex)), from the workspace (fresh
    // per-call buffers of this size cost ~15% of the banded backward in page faults).
    //
    // From a carried state (`states`, causal): the forward (toeplitz_stream::mix) mixed the queries against
    // the keys [history (h rows); new] from position q_first − h with the streaming shift, added
    // num_far = c_far ψ far when the state had evicted, then evicted the oldest h + N − T_max rows into far.
    // All three algorithms run their VJP on those keys (memory O((N + h)·(M' + Ex)), h <= T_max); num_far
    // enters the seed, and its VJP is dψ += c_far G farᵀ, d far += c_far ψᵀ G, ∂L/∂log c_far += ⟨G, num_far⟩.
    // The final state's gradient (history rows d κ, d vx; d far) adds to the rows it holds, to d far, and
    // through far_final = far + Σ_evicted κ vxᵀ to the evicted rows (d κ_j += dfar vx_j, d vx_j += dfarᵀ κ_j).
    // The history rows' gradients stay features: the initial state's gradient is that window's.
    template <class Back>
    void mixing_backward(const const_ref& q, const const_ref& k, const const_ref& v, const const_ref& dout, ref dq, ref dk,
                         ref dv, index head, index q_first, index k_first, const Back& back, double* grad,
                         const backward_item* states, workspace<Scalar>& ws) const
    {
        const index n = q.rows(), nk = k.rows(), e = v.cols();
        if (nk == 0) { // no key: out = 0 whatever q holds (a state call has n = nk > 0)
            dq.setZero();
            return;
        }
        const bool causal = m_opt.mask == masking::causal, with_den = m_opt.norm == normalization::sum;
        const index ex = e + (with_den ? 1 : 0), m = encoded_dim(q.cols());
        const bool carried = states && states->initial; // a state call (a plain batched item holds no states)
        const stream_state* from = carried && !states->initial->empty() ? states->initial : nullptr;
        const index h = from ? from->history() : 0, keys = h + nk; // keys [history; new] from k_first − h
        const auto w = call_weights(head, n, nk, q_first, k_first, carried);
        const toeplitz_algorithm algo = detail::toeplitz_resolve<Scalar>(m_opt.toeplitz, w, n, keys, m, ex,
                                                                         k_first - h - q_first, causal);
        detail::scratch_scope<Scalar> tmp(ws.local());
        auto psi = tmp.matrix(n, m); // (N, M')
        encode_into(q, role::query, head, q_first, psi, tmp.source());
        auto kappa = tmp.matrix(keys, m), vx = tmp.matrix(keys, ex); // (h + Nk, M'), (h + Nk, Ex) = [V, 1] below the history
        if (from) {
            kappa.topRows(h) = from->keys();
            vx.topRows(h) = from->values();
        }
        encode_into(k, role::key, head, k_first, kappa.bottomRows(nk), tmp.source());
        vx.bottomRows(nk).leftCols(e) = v;
        if (with_den) vx.bottomRows(nk).col(e).setOnes();
        std::optional<matrix> num_far; // (N, Ex)
        if (from && from->evicted()) num_far.emplace(w.far_behind() * (psi * from->far()));
        auto g = tmp.matrix(n, ex); // (N, Ex): the seed, written by the mixer
        auto dpsi = tmp.matrix(n, m), dkappa = tmp.matrix(keys, m), dvx = tmp.matrix(keys, ex);
        dpsi.setZero();
        dkappa.setZero();
        dvx.setZero();
        vector<double> dlog_c = vector<double>::Zero(w.c.size());
        detail::toeplitz_backward<Scalar>(w, {psi, kappa, vx, g, dpsi, dkappa, dvx, grad ? &dlog_c : nullptr}, dout,
                                          m_opt.norm, m_opt.eps, q_first, k_first - h, causal, algo, m_opt.threads,
                                          num_far ? &*num_far : nullptr, &tmp.source());
        if (carried && states->initial_grad) {
            matrix dfar = matrix::Zero(m, ex); // (M', Ex)
            if (num_far) {
                dpsi.noalias() += w.far_behind() * (g * from->far().transpose());
                dfar.noalias() += w.far_behind() * (psi.transpose() * g);
                if (grad) dlog_c[0] += static_cast<double>((g.array() * num_far->array()).sum());
            }
            const stream_state* fin = states->final_grad && !states->final_grad->empty() ? states->final_grad : nullptr;
            if (fin) {
                const index evicted = std::max<index>(keys - w.t_max, 0), kept = keys - evicted; // kept = fin->history()
                dkappa.bottomRows(kept) += fin->keys();
                dvx.bottomRows(kept) += fin->values();
                dkappa.topRows(evicted).noalias() += vx.topRows(evicted) * fin->far().transpose();
                dvx.topRows(evicted).noalias() += kappa.topRows(evicted) * fin->far();
                dfar += fin->far();
            }
            states->initial_grad->assign(dkappa.topRows(h), dvx.topRows(h), std::move(dfar), from && from->evicted());
        }
        dv = dvx.bottomRows(nk).leftCols(e);
        const auto features_backward = [&](const const_ref& x, const const_ref& feat, const const_ref& dfeat, ref dx,
                                           role which, index first) {
            detail::parallel_for((x.rows() + detail::fused_block - 1) / detail::fused_block, m_opt.threads, [&](index b) {
                const index r0 = b * detail::fused_block, rows = std::min(detail::fused_block, x.rows() - r0);
                back(x.middleRows(r0, rows), feat.middleRows(r0, rows), dfeat.middleRows(r0, rows), dx.middleRows(r0, rows),
                     which, first + r0);
            });
        };
        features_backward(q, psi, dpsi, dq, role::query, q_first);
        features_backward(k, kappa.bottomRows(nk), dkappa.bottomRows(nk), dk, role::key, k_first);
        if constexpr (detail::has_parameters<PositionalEncoding>::value)
            if (grad) m_pe.mixing_weights_backward(head, w, dlog_c, grad);
    }

    // The gradient of a carried Toeplitz window that nothing used: zeros of its shape (a started window of
    // no history when `s` holds no token).
    stream_state zero_window(const stream_state& s, index d, index e) const
    {
        const index m = encoded_dim(d), ex = e + (m_opt.norm == normalization::sum ? 1 : 0), h = s.empty() ? 0 : s.history();
        stream_state z;
        z.assign(matrix::Zero(h, m), matrix::Zero(h, ex), matrix::Zero(m, ex), !s.empty() && s.evicted());
        return z;
    }

    index gradient_size() const
    {
        if constexpr (detail::has_parameters<PositionalEncoding>::value)
            return m_pe.gradient_size();
        else
            return 0;
    }
    void add_gradients(index head, const double* flat, parameter_gradients& pg) const
    {
        if constexpr (detail::has_parameters<PositionalEncoding>::value) m_pe.add_gradients(head, flat, pg);
    }
    void validate_gradients(const parameter_gradients* pg) const
    {
        if constexpr (detail::has_validate_gradients<PositionalEncoding, parameter_gradients>::value)
            if (pg) m_pe.validate_gradients(*pg);
    }

    // VJP of encode(): dx = pre_iᵀ J_φᵀ post_iᵀ dfeat for rows x, given their features feat = encode(x). With
    // feature-side stages φ's input and output are recomputed (the mixers hold ψ/κ only).
    // Scratch (the recomputed stages) from the arena `a`; `kept`: φ of the rows as encode_into kept it (post
    // stage only), not recomputed.
    void encode_backward(const const_ref& x, const const_ref& feat, const const_ref& dfeat, ref dx, role which,
                         index head, index first, double* grad, detail::arena<Scalar>& a,
                         const const_ref* kept = nullptr) const
    {
        const feature_context ctx = context(which, head);
        if constexpr (!PositionalEncoding::has_pre_feature && !PositionalEncoding::has_post_feature) {
            m_map.apply_backward(x, feat, dfeat, dx, ctx);
        } else {
            const index n = x.rows(), r = feature_input_dim(x.cols());
            detail::scratch_scope<Scalar> tmp(a);
            auto u_pre = tmp.matrix(PositionalEncoding::has_pre_feature ? n : 0, r); // (n, R): φ's input
            if constexpr (PositionalEncoding::has_pre_feature) m_pe.encode_pre(x, ref(u_pre), first, head, which);
            const const_ref u = PositionalEncoding::has_pre_feature ? const_ref(u_pre) : x;
            const bool given = !PositionalEncoding::has_pre_feature && kept && kept->rows() == n;
            auto phi_new = tmp.matrix(given ? 0 : n, m_map.output_dim(r)); // (n, M)
            if (!given) m_map.apply(u, ref(phi_new), ctx);
            const const_ref phi = given ? *kept : const_ref(phi_new);
            auto dphi_post = tmp.matrix(PositionalEncoding::has_post_feature ? n : 0, phi.cols()); // (n, M)
            if constexpr (PositionalEncoding::has_post_feature)
                m_pe.encode_post_backward(const_ref(phi), dfeat, ref(dphi_post), first, head, which, grad);
            const const_ref dphi = PositionalEncoding::has_post_feature ? const_ref(dphi_post) : dfeat;
            if constexpr (PositionalEncoding::has_pre_feature) {
                auto du = tmp.matrix(n, r); // (n, R)
                m_map.apply_backward(u, const_ref(phi), dphi, ref(du), ctx);
                m_pe.encode_pre_backward(x, const_ref(du), dx, first, head, which, grad);
            } else {
                m_map.apply_backward(u, const_ref(phi), dphi, dx, ctx);
            }
        }
    }

    // out holds the numerator; divides by den + eps (sum) or by the row RMS (rms) in place.
    void normalize(ref out, const vector<Scalar>* den) const { detail::normalize_rows<Scalar>(out, den, m_opt.norm, m_opt.eps); }

    FeatureMap m_map;
    PositionalEncoding m_pe;
    options_type m_opt;
    mutable detail::workspace_pool<Scalar> m_pool;
};

} // namespace linrpe

#include "attention_state.hpp"
#include "decoder.hpp"
#include "detail/sequence_calls.hpp"
