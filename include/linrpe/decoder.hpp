#pragma once
/// \file
/// \brief decoder: streaming (recurrent) state of a causal linear_attention, for prefill-then-decode.

#include "detail/parallel.hpp"
#include "errors.hpp"
#include "types.hpp"
#include "views.hpp"

#include <memory>
#include <vector>

namespace linrpe {

/// \brief Streaming state of a causal attention for `batch` × `heads` sequences.
///
/// Holds S = Σ_{j<t} κ_j [v_j, 1]ᵀ (M', E + 1) per (batch, head) and the next absolute position t, so
/// that `prefill(n tokens)` followed by `step()` calls reproduces one batched causal call over the whole
/// sequence (to rounding). Cost per token O(M'·E), independent of t; memory O(B·H·M'·E).
/// With Toeplitz weights (positional::toeplitz_rpe) the state is instead the last T_max tokens' κ and [v, 1]
/// plus one lagged state of everything older (all at the clipped weight c_{−T_max}): per token
/// O(T_max·(M' + E) + M'·E) time and memory, growing as O(t) only while t < T_max.
///
/// The decoder owns a snapshot of the attention, copied at construction (policies are small value types:
/// parameters of H heads), shared read-only by copies of the decoder. So it may outlive the attention
/// (`make_attention().decoder()`, a std::vector of layers that reallocates), and set_options, redraw or
/// new weights on the original never change a live decoder, which keeps computing with the parameters
/// it started with (mixing parameters mid-sequence would not be one attention any more). To use new
/// parameters, create a new decoder; attention() shows the snapshot.
template <class Attention>
class decoder {
public:
    using scalar_type = typename Attention::scalar_type;
    using matrix = row_matrix<scalar_type>;
    using const_ref = Eigen::Ref<const matrix>;
    using ref = Eigen::Ref<matrix>;

    decoder(const Attention& attention, index batch, index heads)
        : m_attn(std::make_shared<const Attention>(attention)), m_batch(batch), m_heads(heads)
    {
        if (attention.opts().mask != masking::causal)
            detail::fail("options.mask (a decoder streams a causal attention)", "masking::causal", "masking::none");
        detail::require_positive("decoder batch", batch);
        detail::require_positive("decoder heads", heads);
        m_state.resize(static_cast<std::size_t>(batch * heads));
    }

    /// Next absolute position (the number of tokens consumed since construction or reset()).
    index position() const { return m_position; }
    index batch() const { return m_batch; }
    index heads() const { return m_heads; }
    /// The snapshot of the attention this decoder computes with (taken at construction).
    const Attention& attention() const { return *m_attn; }

    /// Forgets every sequence; the next token is at position 0.
    void reset()
    {
        for (auto& s : m_state) s = state_type();
        m_position = 0;
        m_width = m_values = -1;
    }

    /// Consumes n tokens per sequence: q, k (B, H, n, D), v (B, H, n, E) → out (B, H, n, E).
    void prefill(tensor_view<const scalar_type> q, tensor_view<const scalar_type> k, tensor_view<const scalar_type> v,
                 tensor_view<scalar_type> out)
    {
        validate(q, k, v, out);
        const index heads = m_heads;
        m_attn->validate_batch(q, k, v, out, m_position);
        const detail::serial_eigen_scope serial_eigen;
        // A step or a short prefill is too little work per (batch, head) to pay for waking threads.
        detail::parallel_for(
            m_batch * heads, m_attn->head_threads(m_batch * heads, q.tokens()),
            [&](index bh) {
                const index b = bh / heads, h = bh % heads;
                m_attn->run_head(q.slice(b, h), k.slice(b, h), v.slice(b, h), out.slice(b, h), h, m_position, m_position,
                                 &m_state[static_cast<std::size_t>(bh)], m_batch * heads);
            },
            m_attn->head_work(q.tokens(), k.tokens(), q.channels(), v.channels()));
        m_width = q.channels();
        m_values = v.channels();
        m_position += q.tokens();
    }

    /// One token per sequence: q, k (B, H, 1, D), v (B, H, 1, E) → out (B, H, 1, E).
    void step(tensor_view<const scalar_type> q, tensor_view<const scalar_type> k, tensor_view<const scalar_type> v,
              tensor_view<scalar_type> out)
    {
        if (q.tokens() != 1) detail::fail("q view tokens (decoder step)", 1, q.tokens());
        prefill(q, k, v, out);
    }

    /// Single-sequence convenience (batch = heads = 1): rows of Q, K, V are consecutive tokens.
    void prefill(const const_ref& q, const const_ref& k, const const_ref& v, ref out)
    {
        if (m_batch != 1 || m_heads != 1)
            detail::fail("decoder batch x heads (matrix overload)", "1 x 1", detail::concat(m_batch, " x ", m_heads));
        prefill(as_view(q), as_view(k), as_view(v), as_view(out));
    }
    void step(const const_ref& q, const const_ref& k, const const_ref& v, ref out)
    {
        if (q.rows() != 1) detail::fail("q rows (decoder step)", 1, q.rows());
        prefill(q, k, v, out);
    }

private:
    static tensor_view<const scalar_type> as_view(const const_ref& m)
    {
        return tensor_view<const scalar_type>(m.data(), 1, 1, m.rows(), m.cols(), 0, 0, m.outerStride(), 1);
    }
    static tensor_view<scalar_type> as_view(ref m)
    {
        return tensor_view<scalar_type>(m.data(), 1, 1, m.rows(), m.cols(), 0, 0, m.outerStride(), 1);
    }

    void validate(const tensor_view<const scalar_type>& q, const tensor_view<const scalar_type>& k,
                  const tensor_view<const scalar_type>& v, const tensor_view<scalar_type>& out) const
    {
        const auto check = [&](const char* name, index b, index h) {
            if (b != m_batch || h != m_heads)
                detail::fail(name, detail::concat("batch x heads = ", m_batch, " x ", m_heads), detail::concat(b, " x ", h));
        };
        check("q view (decoder)", q.batch(), q.heads());
        check("k view (decoder)", k.batch(), k.heads());
        check("v view (decoder)", v.batch(), v.heads());
        check("out view (decoder)", out.batch(), out.heads());
        if (m_width >= 0 && q.channels() != m_width) detail::fail("q view channels (fixed by the first prefill)", m_width, q.channels());
        if (m_values >= 0 && v.channels() != m_values) detail::fail("v view channels (fixed by the first prefill)", m_values, v.channels());
    }

    std::shared_ptr<const Attention> m_attn; // the snapshot; const, so copies of the decoder may share it
    index m_batch, m_heads;
    index m_position = 0;
    index m_width = -1, m_values = -1;
    using state_type = typename Attention::stream_state;
    std::vector<state_type> m_state;
};

} // namespace linrpe
