#pragma once
/// \file
/// \brief context_parallel: one sequence sharded over MPI ranks, each holding a contiguous block of tokens.
///
/// Optional component (CMake `LINRPE_USE_MPI`, target `linrpe::mpi`); nothing else in linrpe includes it.

#include "../attention_state.hpp"
#include "../detail/causal_mixer.hpp"
#include "../detail/normalize.hpp"
#include "../detail/parallel.hpp"
#include "../detail/traits.hpp"
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

    /// The gradients of the encoding's learnable parameters (linrpe::no_parameters when it has none).
    using parameter_gradients = typename Attention::parameter_gradients;

    /// \brief Collective backward of forward(): dq, dk (B, H, n_r, D) and dv (B, H, n_r, E) of ⟨dout, out⟩
    /// over the whole sequence, for this rank's shard, and (when `pg` is given) the gradients of the
    /// encoding's parameters over the whole sequence, ADDED to *pg on every rank (docs/design.md §17).
    ///
    /// Both masks exchange U_r = Σ_{i in r} ψ_i [g_i, g_den,i]ᵀ (M', E + 1) per (batch, head), g and g_den the
    /// normalization's seed, by one more all-gather:
    ///
    ///     causal:     rank r's shard is a call continuing S_in(r) = Σ_{r' < r} Δ_{r'}; its gradients are the
    ///                 local backward from that state with the gradient of the state it leaves,
    ///                 dS_out(r) = Σ_{r' > r} U_{r'}. U_r comes from a first local backward (dS_out = 0), a
    ///                 second one with dS_out(r) gives dk, dv (the last rank needs none).
    ///     non-causal: S = Σ_r Δ_r (the forward's), dψ_i = g_i S_vᵀ + g_den,i z, dq = features' VJP of dψ;
    ///                 U = Σ_r U_r, dκ_j = U_v v_j + U_den, dv_j = U_vᵀ κ_j, dk = features' VJP of dκ;
    ///                 by blocks of rows, O(block·(M' + E)) memory per (batch, head) in flight.
    ///
    /// Parameter gradients: each rank's own part (the local backward's, or the features' VJPs'), flattened
    /// (every row_matrix<double> member of parameter_gradients in declaration order; the shipped encodings'
    /// members are known: LRPE, sineSPE, convSPE), all-gathered and summed in rank order, then added to *pg:
    /// every rank ends with the same bits. Cost per rank: causal two local backwards (one on the last rank),
    /// non-causal about one single-process backward of the shard, plus O(P·B·H·M'·(E + 1)) (and O(P·G) for
    /// G parameter gradients); communication B·H·M'·(E + 1) scalars sent twice (+ G doubles), independent of
    /// N. Bit-identical between runs with the same rank count; equal to the single-process backward to
    /// rounding (the sums regroup). Needs the attention's backward hooks (other encodings stop at compile
    /// time as backward() does). Under `sum` the causal local backward differentiates FAVOR+'s query shift,
    /// which this class's causal forward leaves out (they differ at the order of eps/den). Throws on every
    /// rank, before writing, on invalid or non-tiling shards, gradient views of other extents, or a `pg` of
    /// other shapes.
    void backward(tensor_view<const scalar_type> q, tensor_view<const scalar_type> k, tensor_view<const scalar_type> v,
                  tensor_view<const scalar_type> dout, tensor_view<scalar_type> dq, tensor_view<scalar_type> dk,
                  tensor_view<scalar_type> dv, index first_position, parameter_gradients* pg = nullptr) const
    {
        // validate() reads the extents of its `out` argument only: dout stands in for it.
        const tensor_view<scalar_type> dout_extents(const_cast<scalar_type*>(dout.data()), dout.batch(), dout.heads(),
                                                    dout.tokens(), dout.channels(), dout.stride(0), dout.stride(1),
                                                    dout.stride(2), dout.stride(3));
        validate(q, k, v, dout_extents, first_position, [&] {
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
            if (pg) validate_parameter_gradients(*pg);
        }, pg != nullptr);
        const detail::serial_eigen_scope serial_eigen;
        parameter_gradients local = m_attn.make_parameter_gradients(); // this rank's part
        if (m_attn.opts().mask == masking::causal)
            causal_backward(q, k, v, dout, dq, dk, dv, first_position, pg ? &local : nullptr);
        else
            noncausal_backward(q, k, v, dout, dq, dk, dv, first_position, pg ? &local : nullptr);
        if (!pg) return;
        const auto mine = gradient_matrices(local);
        std::vector<double> flat;
        for (const auto* x : mine) flat.insert(flat.end(), x->data(), x->data() + x->size());
        const std::vector<double> sum = rank_sum(gather(flat), 0, m_size, static_cast<index>(flat.size()));
        std::size_t at = 0;
        for (auto* x : gradient_matrices(*pg)) {
            Eigen::Map<const row_matrix<double>> part(sum.data() + at, x->rows(), x->cols());
            *x += part;
            at += static_cast<std::size_t>(x->size());
        }
    }

private:
    static constexpr index block = 4096;

    using state_rows = detail::causal_state<scalar_type>;

    // Rank r's shard is a call continuing S_in(r): the local backward from that state, given the gradient of
    // the state it leaves (the later ranks' U, summed in rank order). `local` receives this rank's part of
    // the parameter gradients (from the local backward that is final on this rank).
    void causal_backward(const tensor_view<const scalar_type>& q, const tensor_view<const scalar_type>& k,
                         const tensor_view<const scalar_type>& v, const tensor_view<const scalar_type>& dout,
                         const tensor_view<scalar_type>& dq, const tensor_view<scalar_type>& dk,
                         const tensor_view<scalar_type>& dv, index first_position, parameter_gradients* local) const
    {
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
        const bool last = m_rank + 1 == m_size;
        const auto initial = state_of(rank_sum(all, 0, m_rank, total));
        typename Attention::state_type grad;
        // dq final; U_r = grad. On the last rank this is the whole local backward (its parameter part too).
        m_attn.backward(q, k, v, dout, dq, dk, dv, initial, grad, nullptr, nullptr, last ? local : nullptr);
        std::vector<scalar_type> u(static_cast<std::size_t>(total), scalar_type(0));
        for (index bh = 0; bh < batch * heads; ++bh) {
            Eigen::Map<matrix> x(u.data() + bh * slot, m, e + 1);
            const auto& s = grad.slot(bh / heads, bh % heads).stream;
            x.leftCols(e) = s.s;
            if (with_den) x.col(e) = s.z;
        }
        const std::vector<scalar_type> suffix = rank_sum(gather(u), m_rank + 1, m_size, total);
        if (!last) {
            const auto final_grad = state_of(suffix);
            m_attn.backward(q, k, v, dout, dq, dk, dv, initial, grad, &final_grad, nullptr, local);
        }
    }

    // S = Σ_r Δ_r as the forward; per (batch, head) and block of rows: the query side (ψ, the seed, dψ, dq,
    // U_r += ψᵀ [g, g_den]), then U = Σ_r U_r in rank order and the key side (κ, dκ, dv, dk). The rows' seed
    // and products are the single-process non-causal backward's (backward_query_rows, backward_key_rows).
    // Heads run in parallel, the batch of each head serially, so that the parameter gradients of a head sum
    // in batch order into that head's own buffer.
    void noncausal_backward(const tensor_view<const scalar_type>& q, const tensor_view<const scalar_type>& k,
                            const tensor_view<const scalar_type>& v, const tensor_view<const scalar_type>& dout,
                            const tensor_view<scalar_type>& dq, const tensor_view<scalar_type>& dk,
                            const tensor_view<scalar_type>& dv, index first_position, parameter_gradients* local) const
    {
        const auto& opt = m_attn.opts();
        const bool with_den = opt.norm == normalization::sum;
        const index batch = q.batch(), heads = q.heads(), n = q.tokens(), e = v.channels();
        const index m = m_attn.encoded_dim(q.channels()), ex = e + 1, slot = m * ex, total = batch * heads * slot;
        const std::vector<scalar_type> sum_s = rank_sum(gather(local_states(k, v, first_position)), 0, m_size, total);
        // [S, z] or [U_g, u_den] of one (batch, head) from its (M', E + 1) slot (no z without a denominator).
        const auto rows_of = [&](const scalar_type* x) {
            const Eigen::Map<const matrix> st(x, m, ex); // (M', E + 1)
            state_rows r;
            r.s = st.leftCols(e);
            if (with_den) r.z = st.col(e);
            return r;
        };
        std::vector<parameter_gradients> per_head(local ? static_cast<std::size_t>(heads) : 0, m_attn.make_parameter_gradients());
        const auto pg_of = [&](index h) { return local ? &per_head[static_cast<std::size_t>(h)] : nullptr; };
        std::vector<scalar_type> u(static_cast<std::size_t>(total), scalar_type(0));
        detail::parallel_for(heads, opt.threads, [&](index h) {
            for (index b = 0; b < batch; ++b) {
                const index bh = b * heads + h;
                const state_rows state = rows_of(sum_s.data() + bh * slot);
                state_rows part;
                part.reset(m, e, with_den);
                const auto qs = q.slice(b, h);
                const auto ds = dout.slice(b, h);
                auto dqs = dq.slice(b, h);
                for (index r0 = 0; r0 < n; r0 += block) {
                    const index rows = std::min(block, n - r0), first = first_position + r0;
                    const matrix psi = m_attn.features(qs.middleRows(r0, rows), role::query, h, first); // (rows, M')
                    matrix g(rows, e), dpsi(rows, m); // (rows, E), (rows, M')
                    vector<scalar_type> g_den = vector<scalar_type>::Zero(rows);
                    detail::backward_query_rows<scalar_type>(psi, ds.middleRows(r0, rows), state, nullptr, opt.norm, opt.eps, g,
                                                             g_den, dpsi);
                    m_attn.features_backward(qs.middleRows(r0, rows), role::query, h, first, dpsi, dqs.middleRows(r0, rows),
                                             pg_of(h));
                    detail::add_suffix(part, psi, g, g_den);
                }
                Eigen::Map<matrix> x(u.data() + bh * slot, m, ex); // (M', E + 1)
                x.leftCols(e) = part.s;
                if (with_den) x.col(e) = part.z;
            }
        });
        const std::vector<scalar_type> sum_u = rank_sum(gather(u), 0, m_size, total);
        detail::parallel_for(heads, opt.threads, [&](index h) {
            for (index b = 0; b < batch; ++b) {
                const state_rows us = rows_of(sum_u.data() + (b * heads + h) * slot);
                const auto ks = k.slice(b, h);
                const auto vs = v.slice(b, h);
                auto dks = dk.slice(b, h);
                auto dvs = dv.slice(b, h);
                for (index r0 = 0; r0 < n; r0 += block) {
                    const index rows = std::min(block, n - r0), first = first_position + r0;
                    const matrix kappa = m_attn.features(ks.middleRows(r0, rows), role::key, h, first); // (rows, M')
                    matrix dkappa(rows, m);                                                              // (rows, M')
                    detail::backward_key_rows<scalar_type>(kappa, vs.middleRows(r0, rows), us, nullptr, matrix(0, e), dkappa,
                                                           dvs.middleRows(r0, rows));
                    m_attn.features_backward(ks.middleRows(r0, rows), role::key, h, first, dkappa, dks.middleRows(r0, rows),
                                             pg_of(h));
                }
            }
        });
        if (local) // each head's buffer holds that head's rows only: the sum over heads adds zeros elsewhere
            for (const auto& p : per_head) add_into(*local, p);
    }

    // a += b, member by member (the parameter_gradients structs have no common operator+=).
    static void add_into(parameter_gradients& a, const parameter_gradients& b)
    {
        const auto to = gradient_matrices(a);
        const auto from = gradient_matrices(b);
        for (std::size_t i = 0; i < to.size(); ++i) *to[i] += *from[i];
    }

    // The row_matrix<double> members of a parameter_gradients value in declaration order: the shipped
    // encodings' (LRPE, sineSPE, convSPE) and none for linrpe::no_parameters. `known` says which types these are.
    template <class PG>
    using matrix_pointer = std::conditional_t<std::is_const<PG>::value, const row_matrix<double>*, row_matrix<double>*>;
    template <class PG>
    static auto members(PG& pg, int) -> decltype(pg.theta, pg.householder, std::vector<matrix_pointer<PG>>())
    {
        return {&pg.theta, &pg.householder};
    }
    template <class PG>
    static auto members(PG& pg, int) -> decltype(pg.freqs, pg.offsets, pg.gains, pg.gate, std::vector<matrix_pointer<PG>>())
    {
        return {&pg.freqs, &pg.offsets, &pg.gains, &pg.gate};
    }
    template <class PG>
    static auto members(PG& pg, int) -> decltype(pg.query_filter, pg.key_filter, pg.gate, std::vector<matrix_pointer<PG>>())
    {
        return {&pg.query_filter, &pg.key_filter, &pg.gate};
    }
    template <class PG>
    static std::vector<matrix_pointer<PG>> members(PG&, long)
    {
        return {};
    }
    template <class PG>
    static auto gradient_matrices(PG& pg)
    {
        return members(pg, 0);
    }
    static bool known_gradients()
    {
        parameter_gradients probe{};
        return std::is_same<parameter_gradients, no_parameters>::value || !gradient_matrices(probe).empty();
    }
    // A caller's pg: shapes of make_parameter_gradients(), and members this class can reduce.
    void validate_parameter_gradients(const parameter_gradients& pg) const
    {
        if (!known_gradients())
            detail::fail("pg (context_parallel::backward)",
                         "the parameter gradients of a shipped encoding (LRPE, sineSPE, convSPE), whose members are reduced",
                         "a parameter_gradients type of unknown members");
        using encoding = typename Attention::positional_encoding_type;
        if constexpr (detail::has_validate_gradients<encoding, parameter_gradients>::value) m_attn.positional().validate_gradients(pg);
        const auto want = m_attn.make_parameter_gradients();
        const auto have = gradient_matrices(pg);
        const auto shape = gradient_matrices(want);
        for (std::size_t i = 0; i < have.size(); ++i)
            if (have[i]->rows() != shape[i]->rows() || have[i]->cols() != shape[i]->cols())
                detail::fail(detail::concat("pg member ", i, " shape (context_parallel::backward)").c_str(),
                             detail::shape(shape[i]->rows(), shape[i]->cols()), detail::shape(have[i]->rows(), have[i]->cols()));
    }

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
    template <class T>
    std::vector<T> gather(const std::vector<T>& local) const
    {
        const int count = static_cast<int>(local.size());
        std::vector<T> all(local.size() * static_cast<std::size_t>(m_size));
        MPI_Allgather(local.data(), count, mpi_type<T>(), all.data(), count, mpi_type<T>(), m_comm);
        m_bytes_sent += local.size() * sizeof(T);
        return all;
    }

    // Σ_{r in [from, to)} of the gathered blocks of `total` scalars, in rank order (a fixed order on every rank).
    template <class T>
    static std::vector<T> rank_sum(const std::vector<T>& all, int from, int to, index total)
    {
        std::vector<T> sum(static_cast<std::size_t>(total), T(0));
        for (int r = from; r < to; ++r)
            for (index i = 0; i < total; ++i) sum[static_cast<std::size_t>(i)] += all[static_cast<std::size_t>(r * total + i)];
        return sum;
    }

    // Non-causal uses the attention's own features (its FAVOR+ query shift included); causal uses the
    // none-normalized copy so that ψ matches the local part's.
    const Attention& feature_source() const { return m_attn.opts().mask == masking::causal ? m_local : m_attn; }

    template <class T>
    static MPI_Datatype mpi_type()
    {
        static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "float or double");
        return std::is_same<T, float>::value ? MPI_FLOAT : MPI_DOUBLE;
    }

    // Collective: every rank learns every rank's shard and whether it was valid, so all throw together.
    // `extra` runs this rank's further checks (the backward's) inside the same collective verdict;
    // `reduces` (the backward's pg given) must be the same on every rank, as it adds a collective.
    void validate(const tensor_view<const scalar_type>& q, const tensor_view<const scalar_type>& k,
                  const tensor_view<const scalar_type>& v, const tensor_view<scalar_type>& out, index first) const
    {
        validate(q, k, v, out, first, [] {});
    }
    template <class Extra>
    void validate(const tensor_view<const scalar_type>& q, const tensor_view<const scalar_type>& k,
                  const tensor_view<const scalar_type>& v, const tensor_view<scalar_type>& out, index first,
                  const Extra& extra, bool reduces = false) const
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
        // ok, first, tokens, batch, heads, query width, value width, parameter gradients reduced
        constexpr int fields = 8;
        const std::int64_t mine[fields] = {local_error.empty() ? 1 : 0, std::int64_t(first), std::int64_t(q.tokens()),
                                           std::int64_t(q.batch()), std::int64_t(q.heads()), std::int64_t(q.channels()),
                                           std::int64_t(v.channels()), reduces ? 1 : 0};
        std::vector<std::int64_t> all(static_cast<std::size_t>(fields * m_size));
        MPI_Allgather(mine, fields, MPI_INT64_T, all.data(), fields, MPI_INT64_T, m_comm);
        m_bytes_sent = sizeof(mine);
        if (!local_error.empty()) throw error(local_error.substr(std::string("linrpe: ").size()));
        const auto at = [&](int r, int field) { return all[static_cast<std::size_t>(fields * r + field)]; };
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
            if (at(r, 7) != at(0, 7))
                detail::fail("pg (context_parallel::backward: given on every rank or on none)",
                             at(0, 7) ? "a pg on every rank (rank 0 passed one)" : "no pg on any rank (rank 0 passed none)",
                             detail::concat(at(r, 7) ? "a pg" : "none", " on rank ", r));
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
