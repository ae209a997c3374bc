#pragma once
/// \file
/// \brief linear_attention: the one core that every positional-encoding family plugs into.

#include "detail/causal_mixer.hpp"
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
/// For each query i (DESIGN §2):
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
/// \tparam Scalar             float or double; all accumulation is in Scalar.
template <class FeatureMap, class PositionalEncoding = positional::none,
          class Scalar = typename detail::scalar_of<PositionalEncoding>::type>
class linear_attention {
    static_assert(std::is_floating_point<Scalar>::value, "linear_attention needs a floating-point Scalar (float or double).");
    static_assert(detail::is_feature_map_v<FeatureMap, Scalar>,
                  "FeatureMap must provide `static constexpr bool is_positive`, `index output_dim(index) const` and "
                  "`void apply(const Eigen::Ref<const row_matrix<S>>&, Eigen::Ref<row_matrix<S>>, const feature_context&) const`.");
    static_assert(detail::is_positional_encoding_v<PositionalEncoding, Scalar>,
                  "PositionalEncoding must provide `has_pre_feature`, `has_post_feature`, `has_mixing`, "
                  "`bool preserves_positivity(index) const`, and the hooks of every stage it declares: "
                  "pre_output_dim/encode_pre, post_output_dim/encode_post, mixing_weights<S>(head, bool).");

public:
    using feature_map_type = FeatureMap;
    using positional_encoding_type = PositionalEncoding;
    using scalar_type = Scalar;
    using matrix = row_matrix<Scalar>;
    using const_ref = Eigen::Ref<const matrix>;
    using ref = Eigen::Ref<matrix>;
    using options_type = options<Scalar>;

    explicit linear_attention(FeatureMap feature_map = FeatureMap(), PositionalEncoding encoding = PositionalEncoding(),
                              options_type opt = options_type())
        : m_map(std::move(feature_map)), m_pe(std::move(encoding)), m_opt(opt)
    {
        validate_options(m_opt);
    }

    const FeatureMap& feature_map() const { return m_map; }
    FeatureMap& feature_map() { return m_map; }
    const PositionalEncoding& positional() const { return m_pe; }
    PositionalEncoding& positional() { return m_pe; }
    const options_type& opts() const { return m_opt; }
    void set_options(const options_type& opt)
    {
        validate_options(opt);
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
        const index heads = q.heads();
        ws.prepare(call_slots(m_opt.threads));
        detail::parallel_for(q.batch() * heads, head_threads(q.batch() * heads, q.tokens()), [&](index bh) {
            const index b = bh / heads, h = bh % heads;
            run_head(q.slice(b, h), k.slice(b, h), v.slice(b, h), out.slice(b, h), h, first_position, first_position,
                     nullptr, q.batch() * heads, &ws);
        });
    }

    /// Bytes of scratch the attention keeps between calls that pass no workspace (its own workspace).
    std::size_t workspace_bytes() const { return m_pool.own().capacity_bytes(); }
    /// Frees the attention's own workspace; call it while no call on this object runs.
    void release_workspace() { m_pool.own().release(); }

    /// \brief ψ (role::query) or κ (role::key) of the rows `x` at positions first_position.. for `head`,
    /// exactly as forward() computes them for a whole sequence: the input of the exact references.
    matrix features(const const_ref& x, role which, index head = 0, index first_position = 0) const
    {
        detail::check_input_if_any(m_map, feature_input_dim(x.cols()), head);
        detail::check_input_if_any(m_pe, x.cols(), head);
        check_post_feature_dim(x.cols(), head);
        return encode(x, which, head, first_position);
    }

    /// \brief The explicit mixing weights W (N, Nk) that forward() applies: the causal mask and, for a
    /// sequence-mixing encoding, c_{j−i} (shifted by max b where `sum` lets the factor cancel).
    matrix mixing_matrix(index rows, index cols, index head = 0, index q_first = 0, index k_first = 0) const
    {
        matrix w = matrix::Ones(rows, cols);
        if constexpr (PositionalEncoding::has_mixing) {
            const auto c = m_pe.template mixing_weights<Scalar>(head, common_factor_cancels());
            for (index i = 0; i < rows; ++i)
                for (index j = 0; j < cols; ++j) w(i, j) = c.at((k_first + j) - (q_first + i));
        }
        if (m_opt.mask == masking::causal)
            for (index i = 0; i < rows; ++i)
                for (index j = 0; j < cols; ++j)
                    if (k_first + j > q_first + i) w(i, j) = Scalar(0);
        return w;
    }

    /// A streaming decoder for `batch` sequences of `heads` heads (needs masking::causal).
    linrpe::decoder<linear_attention> decoder(index batch = 1, index heads = 1) const
    {
        return linrpe::decoder<linear_attention>(*this, batch, heads);
    }

    // ---- State passing, per-sequence positions, key lengths, packed variable lengths (DESIGN §14) ----

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

private:
    friend class linrpe::decoder<linear_attention>;
    friend class linrpe::attention_state<linear_attention>;
    friend struct detail::sequence_calls<linear_attention>;

    // Per-sequence decoder state: S = Σ κ vxᵀ without mixing weights; band history + far state with them.
    using causal_stream = detail::causal_state<Scalar>;
    using stream_state = std::conditional_t<PositionalEncoding::has_mixing, detail::toeplitz_stream<Scalar>, causal_stream>;

    bool common_factor_cancels() const { return m_opt.norm == normalization::sum; }

    static void validate_options(const options_type& opt)
    {
        if (!(opt.eps > Scalar(0)) || !std::isfinite(static_cast<double>(opt.eps)))
            detail::fail("options.eps", "a finite value > 0", opt.eps);
        if (opt.chunk_size < 1) detail::fail("options.chunk_size", "a value >= 1", opt.chunk_size);
        if (opt.segment_rows < 1) detail::fail("options.segment_rows", "a value >= 1", opt.segment_rows);
        if (opt.threads < 0) detail::fail("options.threads", "a value >= 0 (0 = OpenMP default)", opt.threads);
        if (opt.norm == normalization::sum && !FeatureMap::is_positive && !opt.allow_signed_normalizer)
            detail::fail("options.norm", "normalization::rms or none for a feature map with signed features "
                                         "(or set allow_signed_normalizer: sum can divide by ~0)", "normalization::sum");
    }

    void validate_head(index n, index d, index nk, index dk, index nv, index /*e*/, index head, index q_first,
                       index k_first) const
    {
        if (dk != d) detail::fail("k columns (key width must equal query width)", d, dk);
        if (nv != nk) detail::fail("v rows (values must match keys)", nk, nv);
        if (head < 0) detail::fail("head", "a value >= 0", head);
        if (q_first < 0) detail::fail("first_position", "a value >= 0", q_first);
        if (k_first < 0) detail::fail("key first_position", "a value >= 0", k_first);
        if (m_opt.mask == masking::causal) {
            if (nk != n) detail::fail("k rows (causal attention needs as many keys as queries)", n, nk);
            if (k_first != q_first) detail::fail("key first_position (causal: same as queries)", q_first, k_first);
        }
        detail::check_input_if_any(m_pe, d, head);
        detail::check_input_if_any(m_map, feature_input_dim(d), head);
        check_post_feature_dim(d, head);
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
        const auto dims = [](index a, index b, index c, index d) { return detail::concat("(", a, ", ", b, ", ", c, ", ", d, ")"); };
        if (k.batch() != q.batch() || k.heads() != q.heads())
            detail::fail("k view extents", dims(q.batch(), q.heads(), k.tokens(), q.channels()), dims(k.batch(), k.heads(), k.tokens(), k.channels()));
        if (v.batch() != q.batch() || v.heads() != q.heads())
            detail::fail("v view extents", dims(q.batch(), q.heads(), k.tokens(), v.channels()), dims(v.batch(), v.heads(), v.tokens(), v.channels()));
        if (out.batch() != q.batch() || out.heads() != q.heads() || out.tokens() != q.tokens() || out.channels() != v.channels())
            detail::fail("out view extents", dims(q.batch(), q.heads(), q.tokens(), v.channels()),
                         dims(out.batch(), out.heads(), out.tokens(), out.channels()));
        for (index h = 0; h < q.heads(); ++h)
            validate_head(q.tokens(), q.channels(), k.tokens(), k.channels(), v.tokens(), v.channels(), h, first_position,
                          first_position);
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

    // encode() into `out` (n, M'), with the intermediate stages in the arena.
    void encode_into(const const_ref& x, role which, index head, index first, ref out, detail::arena<Scalar>& a) const
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
                                               setup(q.cols()), *ws, encoder_into(head), normalizer());
            else
                detail::noncausal_forward<Scalar>(q, k, v, out, q_first, k_first, setup(q.cols()), *ws,
                                                  encoder_into(head), normalizer());
        } else {
            const auto w = m_pe.template mixing_weights<Scalar>(head, common_factor_cancels());
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
                                                          encoder(head), normalizer());
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
            normalize(out, with_den ? &den : nullptr);
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

    // What a mixer needs to know about a head call of input width d.
    detail::mixer_setup setup(index d) const
    {
        detail::mixer_setup st;
        st.m = encoded_dim(d);
        st.with_den = m_opt.norm == normalization::sum;
        st.threads = m_opt.threads;
        st.chunk = m_opt.chunk_size;
        st.segment_rows = m_opt.segment_rows;
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
        return [this, head](const const_ref& x, role which, index first, ref out, detail::arena<Scalar>& a) {
            encode_into(x, which, head, first, out, a);
        };
    }
    auto normalizer() const
    {
        return [this](ref o, const vector<Scalar>* den) { normalize(o, den); };
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
