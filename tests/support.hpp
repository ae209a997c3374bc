#pragma once
// Shared test helpers: deterministic inputs, relative errors, and the derived rounding-error bound that
// every fast path is checked against.
#include <linrpe.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "scalars.hpp"

namespace test {
using namespace linrpe;
using linrpe::index;

/// Uniform [-scale, scale] matrix from a fixed seed (std::mt19937 is specified exactly by the standard;
/// uniform_real_distribution is not, so we map raw 32-bit outputs ourselves).
template <class S>
row_matrix<S> uniform(index rows, index cols, std::uint32_t seed, double scale = 1.0)
{
    std::mt19937 gen(seed);
    row_matrix<S> m(rows, cols);
    for (index i = 0; i < m.size(); ++i)
        m.data()[i] = static_cast<S>(scale * (2.0 * (static_cast<double>(gen()) / 4294967295.0) - 1.0));
    return m;
}

/// ‖a − b‖_F / ‖b‖_F in double (0 when both are empty).
template <class A, class B>
double rel_error(const A& a, const B& b)
{
    const row_matrix<double> x = a.template cast<double>(), y = b.template cast<double>();
    const double den = y.norm();
    return den == 0 ? x.norm() : (x - y).norm() / den;
}

/// Unit roundoff u of S (eps/2).
template <class S>
constexpr double unit_roundoff()
{
    return 0.5 * static_cast<double>(std::numeric_limits<S>::epsilon());
}

/// \brief Bound on ‖out − ref‖_F for kernel attention computed in S with sums of at most `terms` products.
///
/// Derivation (Higham, Accuracy and Stability of Numerical Algorithms, §3.5): a computed product of
/// matrices satisfies |fl(AB) − AB| <= γ_n |A||B| with γ_n = n·u/(1 − n·u), n the inner dimension. Every
/// path computes num = ((Ψ Κᵀ) ⊙ W) Vx through products whose nested inner dimensions add up to at most
/// `terms` (non-causal: Nk then M; causal chunked: M, the chunk and the carried state over Nk; FFT adds
/// its own log-depth terms, passed in by the caller), so with Â = |Ψ||Κ|ᵀ ⊙ |W|:
///     |δnum| <= γ_terms Â|V|,   |δden| <= γ_terms Â 1.
/// Then for each row i:
///   none: ‖δout_i‖ <= ‖δnum_i‖
///   sum:  out_i = num_i/(den_i + eps) ⇒ ‖δout_i‖ <= (‖δnum_i‖ + ‖out_i‖·|δden_i|) / (den_i + eps)
///   rms:  out_i = num_i/ρ_i, ρ_i = sqrt(mean num_i² + eps) ⇒ ‖δout_i‖ <= 2‖δnum_i‖/ρ_i
/// (first order; the normalization adds O(u) which the factor 2 in γ absorbs). The returned bound is
/// the Frobenius norm of these row bounds, times a safety factor 2 for the second-order terms.
inline double error_bound(const row_matrix<double>& psi, const row_matrix<double>& kappa, const row_matrix<double>& w,
                          const row_matrix<double>& v, normalization norm, double eps, double u, index terms)
{
    const double gamma = 2.0 * terms * u / (1.0 - terms * u);
    const row_matrix<double> a = ((psi.cwiseAbs() * kappa.cwiseAbs().transpose()).array() * w.cwiseAbs().array()).matrix();
    const row_matrix<double> dnum = gamma * (a * v.cwiseAbs());
    const vector<double> dden = gamma * a.rowwise().sum();
    const row_matrix<double> signed_a = ((psi * kappa.transpose()).array() * w.array()).matrix();
    const row_matrix<double> num = signed_a * v;
    const vector<double> den = signed_a.rowwise().sum();
    double total = 0;
    for (index i = 0; i < psi.rows(); ++i) {
        double bi = dnum.row(i).norm();
        if (norm == normalization::sum) {
            const double d = std::abs(den[i] + eps);
            bi = (bi + num.row(i).norm() / d * dden[i]) / d;
        } else if (norm == normalization::rms) {
            bi = 2.0 * bi / std::sqrt(num.row(i).squaredNorm() / double(std::max<index>(v.cols(), 1)) + eps);
        }
        total += bi * bi;
    }
    return 2.0 * std::sqrt(total);
}

/// The reference result and the bound for `attn` on (q, k, v) (one head, first positions p_q, p_k).
template <class Attention, class S>
std::pair<row_matrix<double>, double> reference_and_bound(const Attention& attn, const row_matrix<S>& q, const row_matrix<S>& k,
                                                          const row_matrix<S>& v, index head = 0, index p_q = 0, index p_k = 0,
                                                          index extra_terms = 0)
{
    const row_matrix<double> psi = attn.features(q, role::query, head, p_q).template cast<double>();
    const row_matrix<double> kappa = attn.features(k, role::key, head, p_k).template cast<double>();
    const row_matrix<double> w = attn.mixing_matrix(q.rows(), k.rows(), head, p_q, p_k).template cast<double>();
    const row_matrix<double> vd = v.template cast<double>();
    const auto& opt = attn.opts();
    const row_matrix<double> ref = reference::kernel_attention(psi, kappa, vd, w, opt.norm, double(opt.eps));
    const index terms = psi.cols() + k.rows() + opt.chunk_size + extra_terms + 4;
    const double bound = error_bound(psi, kappa, w, vd, opt.norm, double(opt.eps), unit_roundoff<S>(), terms);
    return {ref, bound};
}

/// ‖a − b‖_F in double.
template <class A, class B>
double abs_error(const A& a, const B& b)
{
    return (a.template cast<double>() - b.template cast<double>()).norm();
}

/// True when a and b hold the same bits (same shape, every entry identical, NaNs included).
template <class A, class B>
bool bit_identical(const A& a, const B& b)
{
    if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
    if (a.size() == 0) return true; // memcmp must not see the null data pointer of an empty matrix
    return std::memcmp(a.data(), b.data(), sizeof(typename A::Scalar) * static_cast<std::size_t>(a.size())) == 0;
}

// Flattens a parameter_gradients value: every row_matrix<double> member, in declaration order.
inline void append(std::vector<double>& flat, const row_matrix<double>& m) { flat.insert(flat.end(), m.data(), m.data() + m.size()); }
template <class PG>
auto flatten(const PG& pg, int) -> decltype(pg.theta, std::vector<double>())
{
    std::vector<double> f;
    append(f, pg.theta);
    append(f, pg.householder);
    return f;
}
template <class PG>
auto flatten(const PG& pg, int) -> decltype(pg.freqs, std::vector<double>())
{
    std::vector<double> f;
    for (const auto* m : {&pg.freqs, &pg.offsets, &pg.gains, &pg.gate}) append(f, *m);
    return f;
}
template <class PG>
auto flatten(const PG& pg, int) -> decltype(pg.query_filter, std::vector<double>())
{
    std::vector<double> f;
    for (const auto* m : {&pg.query_filter, &pg.key_filter, &pg.gate}) append(f, *m);
    return f;
}
template <class PG>
auto flatten(const PG& pg, int) -> decltype(pg.biases, std::vector<double>())
{
    std::vector<double> f;
    append(f, pg.biases);
    return f;
}
template <class PG>
std::vector<double> flatten(const PG&, long) // an encoding without parameters
{
    return {};
}

} // namespace test
