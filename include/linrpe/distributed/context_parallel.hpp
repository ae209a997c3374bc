#pragma once
/// \file
/// \brief context_parallel: one sequence sharded over MPI ranks, each holding a contiguous block of tokens.
///
/// Optional component (CMake `LINRPE_USE_MPI`, target `linrpe::mpi`); nothing else in linrpe includes it.

#include "../attention_state.hpp"
#include "../detail/normalize.hpp"
#include "../detail/parallel.hpp"
#include "../errors.hpp"
#include "../types.hpp"
#include "../views.hpp"

#include <mpi.h>

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace linrpe {
namespace distributed {

/// \brief Context-parallel linear attention over an MPI communicator (docs/design.md §17).
///
/// Rank r holds tokens [p_r, p_r + n_r) of every (batch, head) — q, k (B, H, n_r, D), v, out (B, H, n_r, E)
/// — with p_{r+1} = p_r + n_r. Linear attention's key side is an associative sum, so the ranks exchange only
/// the per-(batch, head) states of their shards, Δ_r = Σ_{j in r} κ_j [v_j, 1]ᵀ (M', E + 1), never tokens:
///
///     non-causal: S = Σ_r Δ_r                    out_i = ψ_i S[:, :E] / (ψ_i S[:, E] + eps)
///     causal:     S_in(r) = Σ_{r' < r} Δ_{r'}     out_i = normalize(ψ_i S_in(r) + local causal part_i)
///
/// The states are all-gathered and every rank sums them itself in rank order, so the result is
/// bit-identical between runs with the same rank count and equals the single-process call to rounding
/// (the sums only regroup). Per rank and call: O(n_r·M'·E) work as in the single-process call plus
/// O(P·B·H·M'·(E + 1)) for the reduction; communication B·H·M'·(E + 1) scalars sent, P times that received,
/// independent of N. LRPE and SPE act at absolute positions (the counter-based RNG draws the same SPE
/// realization on every rank). Sequence-mixing encodings (Toeplitz RPE) are refused: `dense` and `fft` need
/// the whole sequence on one rank, and the banded halo exchange is not built yet.
///
/// The local causal part is the attention itself with normalization::none on [v, 1] (numerator and
/// denominator as columns), so every feature and encoding path of the single-process library is reused.
/// Under `sum`, FAVOR+'s per-row query shift (a factor that cancels) is therefore not applied here.
template <class Attention>
class context_parallel {
public:
    using attention_type = Attention;
    using scalar_type = typename Attention::scalar_type;
    using matrix = row_matrix<scalar_type>;

    /// Keeps a copy of `attention` (later changes to it do not reach this object) and `comm` (not owned;
    /// must outlive this object). Every rank must construct it with the same configuration.
    context_parallel(const Attention& attention, MPI_Comm comm) : m_attn(attention), m_local(attention), m_comm(comm)
    {
        if (Attention::positional_encoding_type::has_mixing)
            detail::fail("positional encoding (context_parallel)",
                         "one without sequence mixing: Toeplitz dense and fft need the whole sequence on one rank, "
                         "and the banded halo exchange is not available yet",
                         "toeplitz_rpe");
        auto opt = attention.opts();
        opt.norm = normalization::none;
        opt.allow_signed_normalizer = true;
        m_local.set_options(opt);
        MPI_Comm_rank(comm, &m_rank);
        MPI_Comm_size(comm, &m_size);
    }

    int rank() const { return m_rank; }
    int size() const { return m_size; }
    const Attention& attention() const { return m_attn; }
    /// Bytes this rank sent in the last forward() or backward() (the allgathers of its states plus the shard metadata).
    std::size_t bytes_sent() const { return m_bytes_sent; }

    /// \brief Collective: every rank calls it with its own shard and first absolute position. Throws
    /// linrpe::error on every rank (never hangs) if any rank's shard is invalid or the shards do not tile
    /// one sequence; nothing is written to `out` then.
    void forward(tensor_view<const scalar_type> q, tensor_view<const scalar_type> k, tensor_view<const scalar_type> v,
                 tensor_view<scalar_type> out, index first_position) const
    {
        validate(q, k, v, out, first_position);
        const detail::serial_eigen_scope serial_eigen; // this object's own products stay serial (thread-independent)
        const bool causal = m_attn.opts().mask == masking::causal;
        const bool with_den = m_attn.opts().norm == normalization::sum;
        const index batch = q.batch(), heads = q.heads(), n = q.tokens(), e = v.channels();
        const index m = m_attn.encoded_dim(q.channels()), ex = e + 1;
        const index slot = m * ex, total = batch * heads * slot;

        const std::vector<scalar_type> all = gather(local_states(k, v, first_position));
        // The incoming state, summed in rank order: every rank (causal: before this one) in turn.
        const std::vector<scalar_type> incoming = rank_sum(all, 0, causal ? m_rank : m_size, total);
        if (n == 0) return;

        // Causal: the local part first, as numerator and denominator columns of one none-normalized call.
        std::vector<scalar_type> vx, num;
        if (causal) {
            vx.resize(static_cast<std::size_t>(batch * heads * n * ex));
            num.resize(vx.size());
            for (index b = 0; b < batch; ++b)
                for (index h = 0; h < heads; ++h) {
                    Eigen::Map<matrix> dst(vx.data() + (b * heads + h) * n * ex, n, ex); // (n, E + 1)
                    dst.leftCols(e) = v.slice(b, h);
                    dst.col(e).setOnes();
                }
            m_local.forward(q, k, view_bhnd<const scalar_type>(vx.data(), batch, heads, n, ex),
                            view_bhnd(num.data(), batch, heads, n, ex), first_position);
        }
        const auto& opt = m_attn.opts();
        detail::parallel_for(batch * heads, opt.threads, [&](index bh) {
            const index b = bh / heads, h = bh % heads;
            const Eigen::Map<const matrix> state(incoming.data() + bh * slot, m, ex); // (M', E + 1)
            const auto qs = q.slice(b, h);
            auto os = out.slice(b, h);
            for (index r0 = 0; r0 < n; r0 += block) {
                const index rows = std::min(block, n - r0);
                const matrix psi = feature_source().features(qs.middleRows(r0, rows), role::query, h, first_position + r0);
                matrix total_num = psi * state; // (rows, E + 1)
                if (causal) total_num += Eigen::Map<const matrix>(num.data() + (bh * n + r0) * ex, rows, ex);
                auto o = os.middleRows(r0, rows);
                o = total_num.leftCols(e);
                const vector<scalar_type> den = total_num.col(e);
                detail::normalize_rows<scalar_type>(o, with_den ? &den : nullptr, opt.norm, opt.eps);
            }
        });
    }

    /// \brief Collective backward of forward() for a causal attention: dq, dk (B, H, n_r, D) and dv
    /// (B, H, n_r, E) of ⟨dout, out⟩ over the whole sequence, for this rank's shard (docs/design.md §17).
    ///
    /// Rank r's shard is a call continuing the state S_in(r) = Σ_{r' < r} Δ_{r'} (the forward's exclusive
    /// scan), so its gradients are the backward from that state (linear_attention::backward with a state),
    /// once the gradient w.r.t. the state it leaves is known: dS_out(r) = Σ_{r' > r} U_{r'}, the reverse
    /// exclusive scan of U_r = Σ_{i in r} ψ_i [g_i, g_den,i]ᵀ. U_r comes from a first local backward (with
    /// dS_out = 0); the U's are all-gathered and summed in rank order, then a second local backward from
    /// S_in(r) with dS_out(r) gives dk, dv (the last rank needs none). Cost per rank: two local backwards
    /// (one on the last rank) plus O(P·B·H·M'·(E + 1)); communication: B·H·M'·(E + 1) scalars sent twice,
    /// independent of N. Bit-identical between runs with the same rank count; equal to the single-process
    /// backward to rounding. Needs the attention's backward (positional::none; other encodings stop at
    /// compile time as backward() does). Under `sum` the local backward differentiates FAVOR+'s query
    /// shift, which this class's causal forward leaves out (they differ at the order of eps/den). The
    /// non-causal backward is not built yet: it throws linrpe::error. Throws on every rank, before
    /// writing, on invalid or non-tiling shards.
    void backward(tensor_view<const scalar_type> q, tensor_view<const scalar_type> k, tensor_view<const scalar_type> v,
                  tensor_view<const scalar_type> dout, tensor_view<scalar_type> dq, tensor_view<scalar_type> dk,
                  tensor_view<scalar_type> dv, index first_position) const
    {
        // validate() reads the extents of its `out` argument only: dout stands in for it.
        const tensor_view<scalar_type> dout_extents(const_cast<scalar_type*>(dout.data()), dout.batch(), dout.heads(),
                                                    dout.tokens(), dout.channels(), dout.stride(0), dout.stride(1),
                                                    dout.stride(2), dout.stride(3));
        validate(q, k, v, dout_extents, first_position, [&] {
            if (m_attn.opts().mask != masking::causal)
                detail::fail("options.mask (context_parallel::backward)", "masking::causal (the non-causal backward is not built yet)",
                             "masking::none");
            const auto same = [](const char* name, const tensor_view<scalar_type>& x, const tensor_view<const scalar_type>& like) {
                x.validate(name);
                if (x.batch() != like.batch() || x.heads() != like.heads() || x.tokens() != like.tokens() ||
                    x.channels() != like.channels())
                    detail::fail(name, detail::concat("extents (", like.batch(), ", ", like.heads(), ", ", like.tokens(), ", ",
                                                      like.channels(), ")"),
                                 detail::concat("(", x.batch(), ", ", x.heads(), ", ", x.tokens(), ", ", x.channels(), ")"));
            };
            same("dq view", dq, q);
            same("dk view", dk, k);
            same("dv view", dv, v);
        });
        const index batch = q.batch(), heads = q.heads(), e = v.channels();
        const index m = m_attn.encoded_dim(q.channels()), slot = m * (e + 1), total = batch * heads * slot;
        const bool with_den = m_attn.opts().norm == normalization::sum;
        const std::vector<scalar_type> all = gather(local_states(k, v, first_position));
        const auto state_of = [&](const std::vector<scalar_type>& flat) {
            typename Attention::state_type st(batch, heads);
            for (index bh = 0; bh < batch * heads; ++bh) {
                const Eigen::Map<const matrix> x(flat.data() + bh * slot, m, e + 1); // (M', E + 1)
                auto& s = st.slot(bh / heads, bh % heads);
                s.position = first_position;
                s.stream.s = x.leftCols(e);
                if (with_den) s.stream.z = x.col(e);
            }
            return st;
        };
        const auto initial = state_of(rank_sum(all, 0, m_rank, total));
        typename Attention::state_type grad;
        m_attn.backward(q, k, v, dout, dq, dk, dv, initial, grad); // dq final; U_r = grad
        std::vector<scalar_type> u(static_cast<std::size_t>(total), scalar_type(0));
        for (index bh = 0; bh < batch * heads; ++bh) {
            Eigen::Map<matrix> x(u.data() + bh * slot, m, e + 1);
            const auto& s = grad.slot(bh / heads, bh % heads).stream;
            x.leftCols(e) = s.s;
            if (with_den) x.col(e) = s.z;
        }
        const std::vector<scalar_type> suffix = rank_sum(gather(u), m_rank + 1, m_size, total);
        if (m_rank + 1 < m_size) {
            const auto final_grad = state_of(suffix);
            m_attn.backward(q, k, v, dout, dq, dk, dv, initial, grad, &final_grad);
        }
    }

private:
    static constexpr index block = 4096;

    // Δ_r per (batch, head), flattened: Σ κ_j [v_j, 1]ᵀ (M', E + 1) over this shard, κ at absolute positions.
    std::vector<scalar_type> local_states(const tensor_view<const scalar_type>& k, const tensor_view<const scalar_type>& v,
                                          index first_position) const
    {
        const index batch = k.batch(), heads = k.heads(), n = k.tokens(), e = v.channels();
        const index m = m_attn.encoded_dim(k.channels()), ex = e + 1, slot = m * ex;
        std::vector<scalar_type> local(static_cast<std::size_t>(batch * heads * slot), scalar_type(0));
        detail::parallel_for(batch * heads, m_attn.opts().threads, [&](index bh) {
            const index b = bh / heads, h = bh % heads;
            Eigen::Map<matrix> delta(local.data() + bh * slot, m, ex); // (M', E + 1)
            const auto ks = k.slice(b, h);
            const auto vs = v.slice(b, h);
            for (index r0 = 0; r0 < n; r0 += block) {
                const index rows = std::min(block, n - r0);
                const matrix kappa = feature_source().features(ks.middleRows(r0, rows), role::key, h, first_position + r0);
                delta.leftCols(e).noalias() += kappa.transpose() * vs.middleRows(r0, rows); // (M', E)
                delta.col(e) += kappa.colwise().sum().transpose();                          // (M')
            }
        });
        return local;
    }

    // Every rank's `local` (equal sizes), in rank order; counts the bytes sent.
    std::vector<scalar_type> gather(const std::vector<scalar_type>& local) const
    {
        const int count = static_cast<int>(local.size());
        std::vector<scalar_type> all(local.size() * static_cast<std::size_t>(m_size));
        MPI_Allgather(local.data(), count, mpi_type(), all.data(), count, mpi_type(), m_comm);
        m_bytes_sent += local.size() * sizeof(scalar_type);
        return all;
    }

    // Σ_{r in [from, to)} of the gathered blocks of `total` scalars, in rank order (a fixed order on every rank).
    static std::vector<scalar_type> rank_sum(const std::vector<scalar_type>& all, int from, int to, index total)
    {
        std::vector<scalar_type> sum(static_cast<std::size_t>(total), scalar_type(0));
        for (int r = from; r < to; ++r)
            for (index i = 0; i < total; ++i) sum[static_cast<std::size_t>(i)] += all[static_cast<std::size_t>(r * total + i)];
        return sum;
    }

    // Non-causal uses the attention's own features (its FAVOR+ query shift included); causal uses the
    // none-normalized copy so that ψ matches the local part's.
    const Attention& feature_source() const { return m_attn.opts().mask == masking::causal ? m_local : m_attn; }

    static MPI_Datatype mpi_type() { return std::is_same<scalar_type, float>::value ? MPI_FLOAT : MPI_DOUBLE; }

    // Collective: every rank learns every rank's shard and whether it was valid, so all throw together.
    // `extra` runs this rank's further checks (the backward's) inside the same collective verdict.
    void validate(const tensor_view<const scalar_type>& q, const tensor_view<const scalar_type>& k,
                  const tensor_view<const scalar_type>& v, const tensor_view<scalar_type>& out, index first) const
    {
        validate(q, k, v, out, first, [] {});
    }
    template <class Extra>
    void validate(const tensor_view<const scalar_type>& q, const tensor_view<const scalar_type>& k,
                  const tensor_view<const scalar_type>& v, const tensor_view<scalar_type>& out, index first,
                  const Extra& extra) const
    {
        std::string local_error;
        try {
            q.validate("q view");
            k.validate("k view");
            v.validate("v view");
            out.validate("out view");
            const index n = q.tokens();
            if (k.batch() != q.batch() || k.heads() != q.heads() || k.tokens() != n)
                detail::fail("k view extents (the same shard of tokens as q)", detail::concat(q.batch(), " x ", q.heads(), " x ", n),
                             detail::concat(k.batch(), " x ", k.heads(), " x ", k.tokens()));
            if (k.channels() != q.channels()) detail::fail("k view channels (key width must equal query width)", q.channels(), k.channels());
            if (v.batch() != q.batch() || v.heads() != q.heads() || v.tokens() != n)
                detail::fail("v view extents (the same shard of tokens as q)", detail::concat(q.batch(), " x ", q.heads(), " x ", n),
                             detail::concat(v.batch(), " x ", v.heads(), " x ", v.tokens()));
            if (out.batch() != q.batch() || out.heads() != q.heads() || out.tokens() != n || out.channels() != v.channels())
                detail::fail("out view extents", detail::concat("(", q.batch(), ", ", q.heads(), ", ", n, ", ", v.channels(), ")"),
                             detail::concat("(", out.batch(), ", ", out.heads(), ", ", out.tokens(), ", ", out.channels(), ")"));
            if (first < 0) detail::fail("first_position", "a value >= 0", first);
            // The attention's own checks (encoding heads and widths) on an empty block of every head.
            const matrix none(0, q.channels());
            for (index h = 0; h < q.heads(); ++h) (void)m_attn.features(none, role::key, h, first);
            extra();
        } catch (const error& err) {
            local_error = err.what();
        }
        // ok, first, tokens, batch, heads, query width, value width
        const std::int64_t mine[7] = {local_error.empty() ? 1 : 0, std::int64_t(first), std::int64_t(q.tokens()),
                                      std::int64_t(q.batch()), std::int64_t(q.heads()), std::int64_t(q.channels()),
                                      std::int64_t(v.channels())};
        std::vector<std::int64_t> all(static_cast<std::size_t>(7 * m_size));
        MPI_Allgather(mine, 7, MPI_INT64_T, all.data(), 7, MPI_INT64_T, m_comm);
        m_bytes_sent = sizeof(mine);
        if (!local_error.empty()) throw error(local_error.substr(std::string("linrpe: ").size()));
        const auto at = [&](int r, int field) { return all[static_cast<std::size_t>(7 * r + field)]; };
        for (int r = 0; r < m_size; ++r)
            if (!at(r, 0))
                detail::fail("context_parallel shards", "a valid shard on every rank",
                             detail::concat("an invalid shard on rank ", r, " (that rank's error says why)"));
        for (int r = 1; r < m_size; ++r) {
            for (int f = 3; f < 7; ++f)
                if (at(r, f) != at(0, f))
                    detail::fail("context_parallel shard extents (batch, heads, widths equal on every rank)",
                                 detail::concat("(", at(0, 3), ", ", at(0, 4), ", ·, ", at(0, 5), ") and value width ", at(0, 6)),
                                 detail::concat("(", at(r, 3), ", ", at(r, 4), ", ·, ", at(r, 5), ") and value width ", at(r, 6),
                                                " on rank ", r));
            if (at(r, 1) != at(r - 1, 1) + at(r - 1, 2))
                detail::fail("context_parallel first_position (shards must tile one sequence in rank order)",
                             detail::concat(at(r - 1, 1) + at(r - 1, 2), " on rank ", r, " (rank ", r - 1, " holds [", at(r - 1, 1),
                                            ", ", at(r - 1, 1) + at(r - 1, 2), "))"),
                             at(r, 1));
        }
    }

    Attention m_attn, m_local;
    MPI_Comm m_comm;
    int m_rank = 0, m_size = 1;
    mutable std::size_t m_bytes_sent = 0;
};

} // namespace distributed
} // namespace linrpe
