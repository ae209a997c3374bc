#pragma once
// IWYU pragma: private
/// \file
/// \brief Toeplitz mixing, FFT algorithm (Luo et al., NeurIPS 2021): circulant embedding, channel tiles.

#include "../fft/backend.hpp"
#include "../types.hpp"
#include "parallel.hpp"
#include "relative_weights.hpp"
#include "toeplitz_dense.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <complex>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace linrpe {
namespace detail {

/// Smallest 2^a·3^b·5^c >= n (sizes every backend transforms fast; never below n).
inline index fft_fast_length(index n)
{
    index best = 1;
    while (best < n) best *= 2;
    for (index p5 = 1; p5 < best; p5 *= 5)
        for (index p35 = p5; p35 < best; p35 *= 3) {
            index x = p35;
            while (x < n) x *= 2;
            best = std::min(best, x);
        }
    return best;
}

/// \brief Nanoseconds per point of one kissfft transform of length l (5-smooth), from its stages: kissfft
/// factors out 4s, then 2s, 3s, 5s. Per-stage costs fitted on this machine (float, 120 5-smooth sizes in
/// [1e3, 4e4], within 10%; the radix-2 stage from powers of two 2·4^a, which run 1.3–1.5× slower per point
/// than their 4^a neighbours).
inline double kissfft_point_ns(index l)
{
    double ns = 0;
    while (l % 4 == 0) l /= 4, ns += 1.39;
    while (l % 2 == 0) l /= 2, ns += 3.7;
    while (l % 3 == 0) l /= 3, ns += 1.44;
    while (l % 5 == 0) l /= 5, ns += 1.49;
    return ns;
}

/// The circulant length a backend runs for at least n points: for Eigen's kissfft the 5-smooth length in
/// [n, 2n] of least modeled time (avoiding its slow radix-2 stage, e.g. 2^17 → 138240), for FFTW the smallest.
template <class Backend>
index fft_length_for(index n)
{
    n = std::max<index>(n, 2); // kissfft fails on length 1
    if constexpr (std::is_same<Backend, fft::eigen>::value) {
        // Two transforms per lane plus about 4 ns per point of lane work (see toeplitz_cost.hpp); the
        // 5-smooth lengths in [n, 2n] are enumerated (O(log³ n) of them), the shortest of least cost wins.
        const auto cost_of = [](index l) { return double(l) * (2.0 * kissfft_point_ns(l) + 4.0); };
        index best = 0;
        double best_cost = 0;
        for (index p5 = 1; p5 <= 2 * n; p5 *= 5)
            for (index p35 = p5; p35 <= 2 * n; p35 *= 3)
                for (index l = p35; l <= 2 * n; l *= 2) {
                    if (l < n) continue;
                    const double cost = cost_of(l);
                    if (best == 0 || cost < best_cost || (cost == best_cost && l < best)) best = l, best_cost = cost;
                }
        return best;
    } else {
        return fft_fast_length(n);
    }
}

/// \brief Y = C X for the Toeplitz C_ij = w(t = j − i + delta) (N × Nk), by circulant embedding.
///
/// Circular convolution y[i] = Σ_j h[(i − j) mod L] x[j] equals the Toeplitz product when
/// h[d] = w(−d + delta) for d = 0..N−1 and h[L − e] = w(e + delta) for e = 1..Nk−1, and these two ranges
/// do not overlap, i.e. L >= N + Nk − 1 (Luo et al. use 2N; any L >= N + Nk − 1 is exact). There is no
/// causal mask here: every input enters every output's rounding, so the causal algorithm only runs it on
/// rectangles whose keys all rows may see (toeplitz_mix_fft).
///
/// Real channels are packed in pairs into the real and imaginary parts of one complex lane (the kernel h is
/// real, so the two convolutions do not mix); lanes go through the backend in tiles of `tile` lanes.
/// The engine itself holds only ĥ (with the 1/L of the inverse folded in, computed once) and is read-only
/// after construction, so several threads may share it; the working memory, 3·tile·L complex values and
/// the backend plans, lives in a `workspace`, one per concurrently running caller.
template <class S, class Backend>
class toeplitz_fft_engine {
    using cpx = std::complex<S>;
    using buffer = std::vector<cpx, Eigen::aligned_allocator<cpx>>;
    using transform = typename Backend::template transform<S>;

public:
    toeplitz_fft_engine(const relative_weights<S>& w, index n, index nk, index delta, index min_length = 0, index tile = 8)
        : m_n(n), m_nk(nk), m_length(fft_length_for<Backend>(std::max<index>({min_length, n + nk - 1, 2}))),
          m_dist((m_length + 7) / 8 * 8), m_tile(std::max<index>(tile, 1))
    {
        buffer h(static_cast<std::size_t>(m_dist), cpx(0)), hhat(static_cast<std::size_t>(m_dist));
        const S inv_length = S(1) / static_cast<S>(m_length);
        for (index d = 0; d < n; ++d) h[d] = w.at(delta - d) * inv_length;
        for (index e = 1; e < nk; ++e) h[m_length - e] = w.at(delta + e) * inv_length;
        transform(m_length, 1, m_dist, h.data(), hhat.data(), false).execute();
        m_hhat.assign(hhat.begin(), hhat.begin() + m_length);
    }

    index length() const { return m_length; }
    /// ĥ (L values, the 1/L of the inverse folded in): the spectrum of C; Cᵀ has its conjugate (h is real,
    /// and Cᵀ's circulant column is h reversed).
    const std::vector<cpx>& spectrum() const { return m_hhat; }

    /// \brief The mutable half of a run: input, spectrum and output buffers of tile·L complex values each,
    /// and the forward and inverse plans over them, for runs of `channels` channels (tile = min(engine tile,
    /// ⌈channels/2⌉) lanes). Reusable for any number of runs of that many channels, one at a time; the plans
    /// point into the buffers, so a workspace is neither copied nor moved.
    class workspace {
    public:
        workspace(const toeplitz_fft_engine& engine, index channels)
            : m_tile(std::max<index>(1, std::min(engine.m_tile, (channels + 1) / 2))),
              m_in(static_cast<std::size_t>(m_tile * engine.m_dist), cpx(0)), // `in` keeps its zero padding beyond Nk
              m_spectrum(m_in.size()), m_out(m_in.size()),
              m_forward(engine.m_length, m_tile, engine.m_dist, m_in.data(), m_spectrum.data(), false),
              m_inverse(engine.m_length, m_tile, engine.m_dist, m_spectrum.data(), m_out.data(), true)
        {
        }
        workspace(const workspace&) = delete;
        workspace& operator=(const workspace&) = delete;

    private:
        friend class toeplitz_fft_engine;
        index m_tile;
        buffer m_in, m_spectrum, m_out; // declared before the plans, which are made over them
        transform m_forward, m_inverse;
    };

    /// \brief Convolves `channels` real channels in `ws` (made for this engine and this many channels).
    /// fill(c, dst, stride) writes the Nk inputs of channel c to dst[j·stride]; consume(c, src, stride) reads
    /// its N outputs from src[i·stride]. Channels are visited in increasing order, so accumulation in consume
    /// is deterministic; channel c always sits in the same lane slot of the same plan, so its result does not
    /// depend on which workspace runs it or on what other lanes hold.
    template <class Fill, class Consume>
    void run(workspace& ws, index channels, Fill&& fill, Consume&& consume) const
    {
        if (channels == 0 || m_n == 0) return;
        const index lanes = (channels + 1) / 2;
        const index tile = ws.m_tile;
        for (index lane0 = 0; lane0 < lanes; lane0 += tile) {
            const index count = std::min(tile, lanes - lane0);
            for (index p = 0; p < count; ++p) {
                S* x = reinterpret_cast<S*>(ws.m_in.data() + p * m_dist);
                const index a = 2 * (lane0 + p);
                fill(a, x, index(2));
                if (a + 1 < channels) fill(a + 1, x + 1, index(2));
                else for (index j = 0; j < m_nk; ++j) x[2 * j + 1] = S(0);
            }
            // The whole tile is transformed; lanes beyond `count` hold stale inputs whose results are unused.
            ws.m_forward.execute();
            for (index p = 0; p < tile; ++p) {
                cpx* s = ws.m_spectrum.data() + p * m_dist;
                for (index f = 0; f < m_length; ++f) s[f] *= m_hhat[static_cast<std::size_t>(f)];
            }
            ws.m_inverse.execute();
            for (index p = 0; p < count; ++p) {
                const S* y = reinterpret_cast<const S*>(ws.m_out.data() + p * m_dist);
                const index a = 2 * (lane0 + p);
                consume(a, y, index(2));
                if (a + 1 < channels) consume(a + 1, y + 1, index(2));
            }
        }
    }

    /// run() in a workspace of its own (one thread).
    template <class Fill, class Consume>
    void run(index channels, Fill&& fill, Consume&& consume) const
    {
        if (channels == 0 || m_n == 0) return;
        workspace ws(*this, channels);
        run(ws, channels, std::forward<Fill>(fill), std::forward<Consume>(consume));
    }

private:
    index m_n, m_nk, m_length, m_dist, m_tile;
    std::vector<cpx> m_hhat;
};

/// \brief FFT algorithm for Toeplitz attention (Luo et al., *Stable, Fast and Accurate: Kernelized Attention
/// with Relative Positional Encoding*, NeurIPS 2021, Algorithm 1):
///
///     num_i = Σ_μ ψ_iμ [C (κ_μ ⊙ vx_ν)]_i   for every channel (μ, ν) of κ ⊗ vx   (M·Ex channels)
///
/// The outer products must be formed before the convolution (they do not commute with it), hence M·Ex
/// convolutions; each channel is contracted with ψ as soon as its tile returns, so κ ⊗ vx is never stored.
///
/// Threads (`threads`, 0 = OpenMP default; serial inside an enclosing parallel region, e.g. when the
/// batched API already threads over heads) share ĥ and split the work by value column: item ν convolves the
/// M channels (0..M−1, ν), packed in pairs into ⌈M/2⌉ lanes (an odd M leaves half of the last lane zero),
/// and is the only writer of num(·, ν), which it accumulates over μ in increasing order. Partitioning by ν
/// rather than by μ or by lane gives every output column one owner, so there is no reduction to order and
/// no per-thread copy of num, and since the partition and each item's lane packing depend on M and Ex only,
/// every value is computed by the same operations in the same order for any thread count: the result is
/// bit-identical for any `threads`. Items are grouped into one contiguous block per running thread, each
/// with one workspace. O(Ex·⌈M/2⌉·L log L + (N + Nk)·M·Ex) time, O(threads·tile·L + (N + Nk)·(M + Ex))
/// extra memory.
///
/// This is the rectangle kernel: every key in it weighs on every query (the causal algorithm,
/// toeplitz_mix_fft, only gives it rectangles whose keys are all visible to all their queries).
///
/// With `side` (the backward's recompute under `sum`, toeplitz_backward), every convolution Y_μν = C (κ_μ ⊙
/// vx_ν) also gives the two sums that dΨ needs, so that the backward does not transform A = κ_μ ⊙ vx_ν
/// again: P_iμ = Σ_{ν < E} dout_iν Y_iμν and Yden_iμ = Y_iμE (the ones column). Then the items run in a
/// fixed min(Ex, 4) groups of value columns, each summing its own P, added in group order (bit-identical
/// for any thread count); num is computed as without `side`.
template <class S>
struct fft_side_products {
    Eigen::Ref<const row_matrix<S>> dout; // (N, E): the output seed
    row_matrix<S> p, yden;                // (N, M) each, written
};

template <class S, class Backend = fft::default_backend>
void toeplitz_mix_fft_rectangle(const relative_weights<S>& w, const Eigen::Ref<const row_matrix<S>>& psi,
                                const Eigen::Ref<const row_matrix<S>>& kappa, const Eigen::Ref<const row_matrix<S>>& vx,
                                Eigen::Ref<row_matrix<S>> num, index q_first, index k_first, index min_length = 0,
                                int threads = 0, fft_side_products<S>* side = nullptr)
{
    const index n = psi.rows(), nk = kappa.rows(), m = psi.cols(), ex = vx.cols();
    if (n == 0) return;
    if (side) {
        side->p.setZero(n, m);
        side->yden.setZero(n, m);
    }
    if (nk == 0 || m == 0) {
        num.setZero();
        return;
    }
    using engine_t = toeplitz_fft_engine<S, Backend>;
    // Channel-major copies: every channel reads and writes contiguous rows.
    const row_matrix<S> kt = kappa.transpose(); // (M, Nk)
    const row_matrix<S> vt = vx.transpose();    // (Ex, Nk)
    const row_matrix<S> psit = psi.transpose(); // (M, N)
    row_matrix<S> nt = row_matrix<S>::Zero(ex, n); // (Ex, N); row ν is written by item ν only
    const engine_t engine(w, n, nk, k_first - q_first, min_length);
    // FFT rounding is absolute (≈ eps·log L·‖c‖·‖x‖), so a convolution whose true value is tiny can come out
    // slightly negative. With weights c >= 0, a channel whose inputs all have one sign has outputs of that
    // sign: clamping them only moves toward the exact value, and keeps the denominator channels (κ >= 0
    // times the ones column) non-negative, so den + eps > 0 for positive feature maps at any bias range.
    const bool weights_non_negative = (w.c.array() >= S(0)).all();
    // One block of consecutive items per thread that runs at once, so buffers scale with the threads, not
    // with Ex. The blocks only decide which workspace runs an item, never what it computes.
    const index blocks = side ? std::min<index>(ex, 4) : concurrent_items(ex, threads);
    const index values = side ? side->dout.cols() : 0;
    const row_matrix<S> dt = side ? row_matrix<S>(side->dout.transpose()) : row_matrix<S>(); // (E, N)
    std::vector<row_matrix<S>> pt(static_cast<std::size_t>(side ? blocks : 0));          // (M, N) per group
    row_matrix<S> ydt = side ? row_matrix<S>::Zero(m, n) : row_matrix<S>();              // (M, N)
    parallel_for(blocks, threads, [&](index b) {
        typename engine_t::workspace ws(engine, m);
        std::vector<signed char> sign(static_cast<std::size_t>(m), 0); // per channel μ of the current item
        if (side) pt[b].setZero(m, n);
        for (index nu = ex * b / blocks; nu < ex * (b + 1) / blocks; ++nu) {
            const S* v = vt.row(nu).data();
            S* o = nt.row(nu).data();
            // The side sum of this item: P (dout column ν) or Yden (the ones column), else none.
            const S* dv = side && nu < values ? dt.row(nu).data() : nullptr;
            const bool den_column = side && nu == values;
            engine.run(
                ws, m,
                [&](index mu, S* dst, index stride) {
                    const S* k = kt.row(mu).data();
                    bool non_negative = true, non_positive = true;
                    for (index j = 0; j < nk; ++j) {
                        const S x = k[j] * v[j];
                        dst[j * stride] = x;
                        non_negative = non_negative && x >= S(0);
                        non_positive = non_positive && x <= S(0);
                    }
                    sign[static_cast<std::size_t>(mu)] =
                        !weights_non_negative ? 0 : non_negative ? 1 : non_positive ? -1 : 0;
                },
                [&](index mu, const S* src, index stride) {
                    const S* p = psit.row(mu).data();
                    const auto add = [&](const auto& y) { // y(i): the convolution's output i, clamped by sign
                        for (index i = 0; i < n; ++i) o[i] += p[i] * y(i);
                        if (dv) {
                            S* acc = pt[b].row(mu).data();
                            for (index i = 0; i < n; ++i) acc[i] += dv[i] * y(i);
                        } else if (den_column) {
                            S* yd = ydt.row(mu).data();
                            for (index i = 0; i < n; ++i) yd[i] = y(i);
                        }
                    };
                    switch (sign[static_cast<std::size_t>(mu)]) {
                    case 1:
                        add([&](index i) { return std::max(src[i * stride], S(0)); });
                        break;
                    case -1:
                        add([&](index i) { return std::min(src[i * stride], S(0)); });
                        break;
                    default:
                        add([&](index i) { return src[i * stride]; });
                    }
                });
        }
    });
    num = nt.transpose();
    if (!side) return;
    row_matrix<S> total = row_matrix<S>::Zero(m, n); // (M, N): the groups' P in group order
    for (const row_matrix<S>& part : pt) total += part;
    side->p = total.transpose();
    side->yden = ydt.transpose();
}

/// \brief The pieces of the causal divide and conquer (toeplitz_mix_fft) for N rows and key offset delta:
/// add(r0, rows, c0, c1, visible_to_all) for the keys [0, −delta) visible to every row, then the triangle of
/// rows [r0, r0 + rows) (row r0 + a sees keys [c0, c0 + a], c0 = r0 − delta) halved recursively into its
/// lower half's rectangle of the upper half's keys (visible_to_all) and two half triangles, down to
/// triangles of fewer than 2·direct_rows rows (visible_to_all false). Keys are not clamped to [0, Nk).
template <class Add>
void causal_fft_pieces(index n, index delta, index direct_rows, const Add& add)
{
    const auto triangle = [&](const auto& self, index r0, index rows) -> void {
        const index c0 = r0 - delta;
        if (rows / 2 < direct_rows) {
            add(r0, rows, c0, c0 + rows, false);
            return;
        }
        const index h = rows / 2;
        self(self, r0, h);
        add(r0 + h, rows - h, c0, c0 + h, true);
        self(self, r0 + h, rows - h);
    };
    add(0, n, 0, -delta, true);
    triangle(triangle, 0, n);
}

/// \brief The FFT algorithm, causal or not. Non-causal: toeplitz_mix_fft_rectangle (Luo et al.).
///
/// Causal: one circulant over the whole sequence would let every input, future ones included, enter every
/// output's rounding (a future value of 1e6 changed an output at position 0 from 0.103 to −1.58). Instead,
/// divide and conquer: row i sees keys j <= i − delta; the keys visible to every row ([0, −delta), the
/// decoder's history) form one rectangle, and the rest is a causal triangle, halved recursively: the lower
/// half of its rows gets the upper half's keys as one rectangle (all visible, one FFT product of length
/// about 2·rows), and the two half triangles recurse. Triangles of fewer than 2·direct_rows rows and
/// rectangles narrower than direct_rows run directly (toeplitz_mix_dense), where the FFT would cost more
/// (the cost model's crossover, toeplitz_fft_direct_rows). No FFT ever holds a key that one of its output
/// rows cannot see, so past outputs are bit-identical whatever the future holds, and the result equals the
/// dense algorithm to rounding. O(M·Ex·N log² N) time; memory as the rectangle kernel.
template <class S, class Backend = fft::default_backend>
void toeplitz_mix_fft(const relative_weights<S>& w, const Eigen::Ref<const row_matrix<S>>& psi,
                      const Eigen::Ref<const row_matrix<S>>& kappa, const Eigen::Ref<const row_matrix<S>>& vx,
                      Eigen::Ref<row_matrix<S>> num, index q_first, index k_first, bool causal, index min_length = 0,
                      int threads = 0, index direct_rows = 64)
{
    const index n = psi.rows(), nk = kappa.rows(), ex = vx.cols();
    if (!causal) {
        toeplitz_mix_fft_rectangle<S, Backend>(w, psi, kappa, vx, num, q_first, k_first, min_length, threads);
        return;
    }
    if (n == 0) return;
    num.setZero();
    direct_rows = std::max<index>(direct_rows, 1);
    const index delta = k_first - q_first;
    row_matrix<S> part;
    // num rows [r0, r0 + rows) += the product with keys [c0, c1), by FFT when both sides are long enough.
    const auto add = [&](index r0, index rows, index c0, index c1, bool visible_to_all) {
        c0 = std::max<index>(c0, 0), c1 = std::min(c1, nk);
        if (rows <= 0 || c1 <= c0) return;
        part.resize(rows, ex);
        const auto p = psi.middleRows(r0, rows);
        const auto k = kappa.middleRows(c0, c1 - c0);
        const auto v = vx.middleRows(c0, c1 - c0);
        if (visible_to_all && std::min(rows, c1 - c0) >= direct_rows)
            toeplitz_mix_fft_rectangle<S, Backend>(w, p, k, v, part, q_first + r0, k_first + c0, 0, threads);
        else
            toeplitz_mix_dense<S>(w, p, k, v, part, q_first + r0, k_first + c0, !visible_to_all, 128, threads);
        num.middleRows(r0, rows) += part;
    };
    causal_fft_pieces(n, delta, direct_rows, add);
}

/// \brief VJP of toeplitz_mix_fft_rectangle (added to `x`'s outputs; formulas in toeplitz_dense.hpp). For
/// every channel pair (μ, ν) with A = κ_μ ⊙ vx_ν (Nk) and B = ψ_μ ⊙ g_ν (N), one forward transform each gives
///
///     Y = C A:    dΨ_iμ += g_iν Y_i
///     Z = Cᵀ B:   dΚ_jμ += vx_jν Z_j,   dVx_jν += κ_jμ Z_j          (Cᵀ's spectrum is conj(ĥ))
///     r = B ⋆ A:  r_s = Σ_i B_i A_{i+s}, so ∂L/∂log c_t += c_t r_{t − delta}   (spectrum conj(B̂)·Â)
///
/// Channels go in pairs μ, μ + 1 through one complex lane as in the forward; the real part of the complex
/// correlation of two packed lanes is the sum of the two real correlations, so the correlation spectra of
/// all lanes are summed (in double) and inverted once. Four transforms per lane against the forward's two
/// (two or three without dΨ, below): O(M·Ex·L log L). Threads take a fixed number of groups of value columns ν (the partition depends on Ex
/// only): each group owns its dVx columns and keeps partial dΨ, dΚ and correlation sums, added in group
/// order, so the result is bit-identical for any thread count. Extra memory O(groups·(N + Nk)·M + tile·L).
///
/// `with_dpsi` false: dΨ is left to the caller (toeplitz_backward forms it from the recompute's side
/// products, fft_side_products), so Y = C A is not formed, and A is transformed only for ∂L/∂log c: three
/// transforms per lane with the bias gradient, two without.
template <class S, class Backend = fft::default_backend>
void toeplitz_backward_fft_rectangle(const relative_weights<S>& w, toeplitz_vjp<S> x, index q_first, index k_first,
                                     int threads = 0, bool with_dpsi = true)
{
    using cpx = std::complex<S>;
    using buffer = std::vector<cpx, Eigen::aligned_allocator<cpx>>;
    using transform = typename Backend::template transform<S>;
    const index n = x.psi.rows(), nk = x.kappa.rows(), m = x.psi.cols(), ex = x.vx.cols();
    if (n == 0 || nk == 0 || m == 0 || ex == 0) return;
    const index delta = k_first - q_first;
    const toeplitz_fft_engine<S, Backend> engine(w, n, nk, delta);
    const index length = engine.length(), dist = (length + 7) / 8 * 8, lanes = (m + 1) / 2;
    const std::vector<cpx>& hhat = engine.spectrum();
    const row_matrix<S> kt = x.kappa.transpose(), vt = x.vx.transpose(); // (M, Nk), (Ex, Nk)
    const row_matrix<S> pt = x.psi.transpose(), gt = x.g.transpose();    // (M, N), (Ex, N)
    row_matrix<S> dvt = row_matrix<S>::Zero(ex, nk);                      // (Ex, Nk): row ν owned by its group
    const index groups = std::min<index>(ex, 4);
    const bool need_a = with_dpsi || x.dlog_c; // A's spectrum: for Y = C A and for the correlation
    std::vector<row_matrix<S>> dpt(static_cast<std::size_t>(groups)), dkt(dpt.size()); // (M, N), (M, Nk)
    std::vector<std::vector<std::complex<double>>> corr(dpt.size());
    parallel_for(groups, threads, [&](index gi) {
        const index tile = std::min<index>(lanes, 8);
        buffer in_a(static_cast<std::size_t>(tile * dist), cpx(0)), in_b(in_a.size()), sp_a(in_a.size()), sp_b(in_a.size()),
            out_a(in_a.size()), out_b(in_a.size()); // inputs stay zero beyond Nk (A) and N (B)
        transform fwd_a(length, tile, dist, in_a.data(), sp_a.data(), false), fwd_b(length, tile, dist, in_b.data(), sp_b.data(), false);
        transform inv_a(length, tile, dist, sp_a.data(), out_a.data(), true), inv_b(length, tile, dist, sp_b.data(), out_b.data(), true);
        row_matrix<S>& dp = dpt[gi];
        row_matrix<S>& dk = dkt[gi];
        if (with_dpsi) dp.setZero(m, n);
        dk.setZero(m, nk);
        std::vector<std::complex<double>>& acc = corr[gi];
        acc.assign(x.dlog_c ? static_cast<std::size_t>(length) : 0, std::complex<double>(0));
        for (index nu = ex * gi / groups; nu < ex * (gi + 1) / groups; ++nu) {
            const S* v = vt.row(nu).data();
            const S* gv = gt.row(nu).data();
            S* dv = dvt.row(nu).data();
            for (index lane0 = 0; lane0 < lanes; lane0 += tile) {
                const index count = std::min(tile, lanes - lane0);
                for (index p = 0; p < count; ++p) {
                    const index mu = 2 * (lane0 + p);
                    const bool pair = mu + 1 < m;
                    cpx* a = in_a.data() + p * dist;
                    cpx* b = in_b.data() + p * dist;
                    if (need_a)
                        for (index j = 0; j < nk; ++j) a[j] = cpx(kt(mu, j) * v[j], pair ? kt(mu + 1, j) * v[j] : S(0));
                    for (index i = 0; i < n; ++i) b[i] = cpx(pt(mu, i) * gv[i], pair ? pt(mu + 1, i) * gv[i] : S(0));
                }
                if (need_a) fwd_a.execute();
                fwd_b.execute();
                for (index p = 0; p < tile; ++p) {
                    cpx* a = sp_a.data() + p * dist;
                    cpx* b = sp_b.data() + p * dist;
                    for (index f = 0; f < length; ++f) {
                        if (p < count && x.dlog_c)
                            acc[static_cast<std::size_t>(f)] += std::complex<double>(std::conj(b[f]) * a[f]);
                        const cpx h = hhat[static_cast<std::size_t>(f)];
                        if (with_dpsi) a[f] *= h;
                        b[f] *= std::conj(h);
                    }
                }
                if (with_dpsi) inv_a.execute();
                inv_b.execute();
                for (index p = 0; p < count; ++p) {
                    const index mu = 2 * (lane0 + p);
                    const bool pair = mu + 1 < m;
                    const cpx* y = out_a.data() + p * dist;
                    const cpx* z = out_b.data() + p * dist;
                    if (with_dpsi)
                        for (index i = 0; i < n; ++i) dp(mu, i) += gv[i] * y[i].real();
                    for (index j = 0; j < nk; ++j) {
                        dk(mu, j) += v[j] * z[j].real();
                        dv[j] += kt(mu, j) * z[j].real();
                    }
                    if (!pair) continue;
                    if (with_dpsi)
                        for (index i = 0; i < n; ++i) dp(mu + 1, i) += gv[i] * y[i].imag();
                    for (index j = 0; j < nk; ++j) {
                        dk(mu + 1, j) += v[j] * z[j].imag();
                        dv[j] += kt(mu + 1, j) * z[j].imag();
                    }
                }
            }
        }
    });
    for (index gi = 0; gi < groups; ++gi) {
        if (with_dpsi) x.dpsi.noalias() += dpt[gi].transpose();
        x.dkappa.noalias() += dkt[gi].transpose();
    }
    x.dvx.noalias() += dvt.transpose();
    if (!x.dlog_c) return;
    using dtransform = typename Backend::template transform<double>;
    std::vector<std::complex<double>> sum(static_cast<std::size_t>(length), 0.0), r(sum.size());
    for (index gi = 0; gi < groups; ++gi)
        for (index f = 0; f < length; ++f) sum[static_cast<std::size_t>(f)] += corr[gi][static_cast<std::size_t>(f)];
    dtransform(length, 1, length, sum.data(), r.data(), true).execute();
    // Offsets s = j − i in [−(N − 1), Nk − 1] sit at s mod L (no aliasing: L >= N + Nk − 1).
    std::vector<double> bins(static_cast<std::size_t>(n + nk - 1));
    for (index s = -(n - 1); s < nk; ++s)
        bins[static_cast<std::size_t>(s + n - 1)] =
            static_cast<double>(w.at(s + delta)) * r[static_cast<std::size_t>((s + length) % length)].real() / double(length);
    fold_offset_bins(w, bins, delta - (n - 1), *x.dlog_c);
}

/// \brief VJP of toeplitz_mix_fft (added to `x`'s outputs): non-causal the rectangle VJP; causal the same
/// divide and conquer as the forward, each FFT rectangle by toeplitz_backward_fft_rectangle and each direct
/// piece by toeplitz_backward_dense. O(M·Ex·N log² N) causal.
template <class S, class Backend = fft::default_backend>
void toeplitz_backward_fft(const relative_weights<S>& w, toeplitz_vjp<S> x, index q_first, index k_first, bool causal,
                           int threads = 0, index direct_rows = 64)
{
    if (!causal) {
        toeplitz_backward_fft_rectangle<S, Backend>(w, x, q_first, k_first, threads);
        return;
    }
    const index n = x.psi.rows(), nk = x.kappa.rows(), delta = k_first - q_first;
    if (n == 0) return;
    direct_rows = std::max<index>(direct_rows, 1);
    const auto add = [&](index r0, index rows, index c0, index c1, bool visible_to_all) {
        c0 = std::max<index>(c0, 0), c1 = std::min(c1, nk);
        if (rows <= 0 || c1 <= c0) return;
        const toeplitz_vjp<S> part = x.sub(r0, rows, c0, c1 - c0);
        if (visible_to_all && std::min(rows, c1 - c0) >= direct_rows)
            toeplitz_backward_fft_rectangle<S, Backend>(w, part, q_first + r0, k_first + c0, threads);
        else
            toeplitz_backward_dense<S>(w, part, q_first + r0, k_first + c0, !visible_to_all);
    };
    causal_fft_pieces(n, delta, direct_rows, add);
}

/// \brief Y (N, F) = C X for X (Nk, F), C_ij = w(j − i + delta) (0 for j − i + delta > 0 when causal), by FFT
/// of length >= max(min_length, N + Nk − 1); causal by the divide and conquer of toeplitz_mix_fft (with
/// FFT rectangles from 8 rows on; min_length is then unused). O(F·L log L) time (causal O(F·L log² L)),
/// O(tile·L) extra memory; one thread.
template <class S, class Backend = fft::default_backend>
void toeplitz_product_fft(const relative_weights<S>& w, const Eigen::Ref<const row_matrix<S>>& x,
                          Eigen::Ref<row_matrix<S>> y, index delta, bool causal, index min_length = 0)
{
    const index n = y.rows(), nk = x.rows(), f = x.cols();
    if (n == 0) return;
    if (causal) { // a product is attention with ψ_i = κ_j = 1 (M = 1) and Vx = X
        const row_matrix<S> ones_q = row_matrix<S>::Ones(n, 1), ones_k = row_matrix<S>::Ones(nk, 1);
        toeplitz_mix_fft<S, Backend>(w, ones_q, ones_k, x, y, 0, delta, true, 0, 1, 8);
        return;
    }
    const toeplitz_fft_engine<S, Backend> engine(w, n, nk, delta, min_length);
    engine.run(
        f, [&](index c, S* dst, index stride) { for (index j = 0; j < nk; ++j) dst[j * stride] = x(j, c); },
        [&](index c, const S* src, index stride) { for (index i = 0; i < n; ++i) y(i, c) = src[i * stride]; });
}

/// \brief Error amplification of the FFT algorithm for these weights: κ = ‖g‖₂·√Nk / min_i Σ_j g(j − i),
/// with g the weights the N × Nk Toeplitz matrix uses. FFT rounding is about eps·log2 L·‖g‖₂·‖x‖₂ absolute,
/// while a row's value is at least min_i Σ_j g(j − i) times the smallest input, so the relative error of
/// the worst row is about eps·log2 L·κ. κ ≈ √2 for constant weights, ≈ √Nk for b_t = −5|t|, and
/// astronomically large when b spans ±50; infinite when some row sees no key. O(N + Nk).
template <class S>
double toeplitz_fft_amplification(const relative_weights<S>& w, index n, index nk, index delta, bool causal)
{
    if (n == 0 || nk == 0) return 0.0;
    // prefix[s + n] = Σ_{s' < s} g(s') over s' = j − i in [−(n − 1), nk − 1].
    std::vector<double> prefix(static_cast<std::size_t>(n + nk), 0.0);
    double square = 0.0;
    for (index s = -(n - 1); s < nk; ++s) {
        const index t = s + delta;
        const double g = (causal && t > 0) ? 0.0 : static_cast<double>(w.at(t));
        square += g * g;
        prefix[static_cast<std::size_t>(s + n)] = prefix[static_cast<std::size_t>(s + n - 1)] + g;
    }
    double smallest = std::numeric_limits<double>::infinity();
    for (index i = 0; i < n; ++i) // row i covers s in [−i, nk − 1 − i]
        smallest = std::min(smallest, prefix[static_cast<std::size_t>(nk - 1 - i + n)] - prefix[static_cast<std::size_t>(n - i - 1)]);
    if (!(smallest > 0.0)) return std::numeric_limits<double>::infinity();
    return std::sqrt(square) * std::sqrt(static_cast<double>(nk)) / smallest;
}

} // namespace detail
} // namespace linrpe
