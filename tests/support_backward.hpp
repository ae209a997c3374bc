#pragma once
// Shared helpers of the backward tests: the exact reference gradients of a configuration (double) and the
// derived rounding bound a fast backward in S is checked against.
#include "support.hpp"

#include <algorithm>
#include <cmath>

namespace test {

/// dQ, dK, dV of one head.
struct grads {
    row_matrix<double> dq, dk, dv;
};

/// \brief Per-row Frobenius norms ‖J_i‖_F of the feature Jacobians J_i = ∂φ(x_i)/∂x_i (M', D), in double,
/// by M' probes of the map's VJP (dphi = e_r on every row gives ∂φ_r/∂x_i for all i at once).
template <class Map>
vector<double> jacobian_norms(const Map& map, const row_matrix<double>& x, const row_matrix<double>& phi,
                              const feature_context& ctx)
{
    vector<double> sq = vector<double>::Zero(x.rows());
    row_matrix<double> probe = row_matrix<double>::Zero(x.rows(), phi.cols()), dx(x.rows(), x.cols());
    for (index r = 0; r < phi.cols(); ++r) {
        probe.setZero();
        probe.col(r).setOnes();
        map.template apply_backward<double>(x, phi, probe, dx, ctx);
        sq += dx.rowwise().squaredNorm();
    }
    return sq.cwiseSqrt();
}

/// The result of reference_backward: exact gradients and the bounds on ‖fast − exact‖_F for each.
struct reference_grads {
    grads exact;
    double bound_dq = 0, bound_dk = 0, bound_dv = 0;
};

/// REQUIREs each of dq, dk, dv within its bound of the reference, CAPTUREing the errors and the bounds.
template <class Q, class K, class V>
void require_within(const Q& dq, const K& dk, const V& dv, const reference_grads& ref)
{
    const double eq = abs_error(dq, ref.exact.dq), ek = abs_error(dk, ref.exact.dk), ev = abs_error(dv, ref.exact.dv);
    CAPTURE(eq, ref.bound_dq, ek, ref.bound_dk, ev, ref.bound_dv);
    REQUIRE(eq <= ref.bound_dq);
    REQUIRE(ek <= ref.bound_dk);
    REQUIRE(ev <= ref.bound_dv);
}

/// \brief Exact gradients of `attn` (one head, positions 0..) for the seed dout, from the double reference
/// (reference::kernel_attention_backward on the features the forward uses, then the map's VJP in double),
/// and the bound on the error of a backward computed in S.
///
/// Derivation (first order, as test::error_bound for the forward; Higham §3.5: a computed product with
/// inner dimension n has |δ| <= γ_n |A||B|). Every fast path forms each product through nested sums whose
/// inner dimensions add up to at most `terms` = M' + Nk + C + 4 (state over Nk keys, M' features, the
/// in-chunk C), so with Â = |Ψ||Κ|ᵀ ⊙ |W|, γ = 2·terms·u/(1 − terms·u), d_i = den_i + eps:
///   numerator and denominator:  |δnum| <= γ Â|V|,  |δden| <= γ Â1
///   seed rows (‖δg_i‖ <= eg_i, |δg_den_i| <= ed_i):
///     sum:  g = dout/d ⇒ eg_i = ‖g_i‖(γ(Â1)_i/|d_i| + u);
///           g_den = −dout·num/d² ⇒ ed_i = (γ |dout_i|·(Â|V|)_i + 2|dout_i·num_i| γ(Â1)_i/|d_i|)/d_i² + u|g_den_i|
///     rms:  g = J_rms(num)ᵀ dout with ‖∂J_rms/∂num‖ <= 3/r² ⇒ eg_i = 3γ ‖(Â|V|)_i‖ ‖dout_i‖ / r_i²
///     none: g = dout exactly
///   mixing VJPs (T = |W| ⊙ (|g||V|ᵀ + |g_den|1ᵀ), E = |W| ⊙ (eg‖v‖ᵀ + ed 1ᵀ)):
///     ‖δdψ_i‖ <= ‖γ (T|Κ|)_i + (E|Κ|)_i‖,   ‖δdκ_j‖ <= ‖γ (Tᵀ|Ψ|)_j + (Eᵀ|Ψ|)_j‖,
///     ‖δdv_j‖ <= ‖γ (Âᵀ|g|)_j‖ + (Âᵀ eg)_j
///   feature VJP dq_i = J_iᵀ dψ_i computed in S: ‖δdq_i‖ <= ‖J_i‖_F (‖δdψ_i‖ + 4 γ_{M'+D+4} ‖dψ_i‖), the second
///     term the VJP's own rounding (one GEMM of inner dimension M', a rank-one term, elementwise products;
///     factor 4 for the absolute values of its terms against ‖J_i‖_F ‖dψ_i‖), likewise dk_j.
/// Each bound is the Frobenius norm of its row bounds times a safety factor 2 for second-order terms.
template <class Attention, class S>
reference_grads reference_backward(const Attention& attn, const row_matrix<S>& q, const row_matrix<S>& k,
                                   const row_matrix<S>& v, const row_matrix<S>& dout, index extra_terms = 0)
{
    const auto& opt = attn.opts();
    const auto& map = attn.feature_map();
    const row_matrix<double> qd = q.template cast<double>(), kd = k.template cast<double>(), vd = v.template cast<double>(),
                             dy = dout.template cast<double>();
    const row_matrix<double> psi = attn.features(q, role::query).template cast<double>();
    const row_matrix<double> kappa = attn.features(k, role::key).template cast<double>();
    const row_matrix<double> w = attn.mixing_matrix(q.rows(), k.rows()).template cast<double>();
    const auto g = reference::kernel_attention_backward(psi, kappa, vd, w, dy, opt.norm, double(opt.eps));
    feature_context cq, ck;
    cq.which = role::query;
    ck.which = role::key;
    cq.row_scale_cancels = ck.row_scale_cancels = opt.norm == normalization::sum;
    reference_grads out;
    out.exact.dq.resize(q.rows(), q.cols());
    out.exact.dk.resize(k.rows(), k.cols());
    map.template apply_backward<double>(qd, psi, g.dpsi, out.exact.dq, cq);
    map.template apply_backward<double>(kd, kappa, g.dkappa, out.exact.dk, ck);
    out.exact.dv = g.dv;

    const index n = q.rows(), nk = k.rows(), e = v.cols(), m = psi.cols();
    const double u = unit_roundoff<S>();
    const index terms = m + nk + std::min<index>(opt.chunk_size, std::max<index>(nk, 1)) + 4 + extra_terms;
    const double gamma = 2.0 * terms * u / (1.0 - terms * u);
    const double gamma_vjp = 2.0 * (m + q.cols() + 4) * u;
    const row_matrix<double> ahat = ((psi.cwiseAbs() * kappa.cwiseAbs().transpose()).array() * w.cwiseAbs().array()).matrix();
    const row_matrix<double> a = ((psi * kappa.transpose()).array() * w.array()).matrix();
    const row_matrix<double> num = a * vd, num_abs = ahat * vd.cwiseAbs();
    const vector<double> den_abs = ahat.rowwise().sum();
    row_matrix<double> gabs(n, e);
    vector<double> gden_abs = vector<double>::Zero(n), eg = vector<double>::Zero(n), ed = vector<double>::Zero(n);
    for (index i = 0; i < n; ++i) {
        if (opt.norm == normalization::sum) {
            const double d = std::abs(a.row(i).sum() + double(opt.eps));
            const double dot = dy.row(i).dot(num.row(i)), dot_abs = dy.row(i).cwiseAbs().dot(num_abs.row(i));
            gabs.row(i) = dy.row(i).cwiseAbs() / d;
            gden_abs[i] = std::abs(dot) / (d * d);
            eg[i] = gabs.row(i).norm() * (gamma * den_abs[i] / d + u);
            ed[i] = (gamma * dot_abs + 2.0 * std::abs(dot) * gamma * den_abs[i] / d) / (d * d) + u * gden_abs[i];
        } else if (opt.norm == normalization::rms) {
            const double r2 = num.row(i).squaredNorm() / double(std::max<index>(e, 1)) + double(opt.eps);
            const double r = std::sqrt(r2);
            // |g| <= (|dout| + |out| |mean(dout ⊙ out)|)/r
            const double mean = std::abs(dy.row(i).dot(num.row(i) / r)) / double(std::max<index>(e, 1));
            gabs.row(i) = (dy.row(i).cwiseAbs() + (num.row(i).cwiseAbs() / r) * mean) / r;
            eg[i] = 3.0 * gamma * num_abs.row(i).norm() * dy.row(i).norm() / r2 + u * gabs.row(i).norm();
        } else {
            gabs.row(i) = dy.row(i).cwiseAbs();
        }
    }
    const vector<double> vnorm = vd.rowwise().norm();
    const vector<double> ones = vector<double>::Ones(nk);
    const row_matrix<double> t = (w.cwiseAbs().array() * (gabs * vd.cwiseAbs().transpose() + gden_abs * ones.transpose()).array()).matrix();
    const row_matrix<double> pert = (w.cwiseAbs().array() * (eg * vnorm.transpose() + ed * ones.transpose()).array()).matrix();
    const row_matrix<double> bpsi = gamma * (t * kappa.cwiseAbs()) + pert * kappa.cwiseAbs();
    const row_matrix<double> bkappa = gamma * (t.transpose() * psi.cwiseAbs()) + pert.transpose() * psi.cwiseAbs();
    const vector<double> bv_eg = ahat.transpose() * eg;
    const row_matrix<double> bv = gamma * (ahat.transpose() * gabs);
    const vector<double> jq = jacobian_norms(map, qd, psi, cq), jk = jacobian_norms(map, kd, kappa, ck);
    double sq = 0, sk = 0, sv = 0;
    for (index i = 0; i < n; ++i) {
        const double b = jq[i] * (bpsi.row(i).norm() + 4.0 * gamma_vjp * g.dpsi.row(i).norm());
        sq += b * b;
    }
    for (index j = 0; j < nk; ++j) {
        const double b = jk[j] * (bkappa.row(j).norm() + 4.0 * gamma_vjp * g.dkappa.row(j).norm());
        sk += b * b;
        const double c = bv.row(j).norm() + bv_eg[j];
        sv += c * c;
    }
    out.bound_dq = 2.0 * std::sqrt(sq);
    out.bound_dk = 2.0 * std::sqrt(sk);
    out.bound_dv = 2.0 * std::sqrt(sv);
    return out;
}

/// One head's backward through the per-head API.
template <class Attention, class S>
grads fast_backward(const Attention& attn, const row_matrix<S>& q, const row_matrix<S>& k, const row_matrix<S>& v,
                    const row_matrix<S>& dout)
{
    row_matrix<S> dq(q.rows(), q.cols()), dk(k.rows(), k.cols()), dv(v.rows(), v.cols());
    attn.backward(q, k, v, dout, dq, dk, dv);
    return {dq.template cast<double>(), dk.template cast<double>(), dv.template cast<double>()};
}

// ---- finite differences ---------------------------------------------------------------------------------
//
// For f smooth near x and a direction u, the central difference D(h) = (f(x + hu) − f(x − hu)) / 2h obeys
//     D(h) = ⟨∇f, u⟩ + (h²/6) f'''[u, u, u] + O(h⁴) + ρ/h,   |ρ| <= max |f̂ − f| (rounding of f near x)
// The h² term is estimated from the same data by Richardson: D(2h) − D(h) = (h²/2) f''' + O(h⁴), so
//     trunc(h) = |D(2h) − D(h)| / 3.
// With |f̂ − f| bounded by `f_round` (per use), the check is
//     |D(h) − ⟨∇f, u⟩| <= 2 (trunc(h) + 2 f_round / h)
// and, so that it can fail, the tolerance must stay below 1e-4 of the directional scale
// ‖∇f‖‖u‖ + |f| ‖u‖ / ‖x‖ (the second term for gradients that vanish, e.g. dq at N = 1 under `sum`):
// with h = 1e-5 on inputs of size ~0.5, trunc ~ 1e-10 f''' and rounding ~ 1e-16 |f| · terms / 1e-5.
// A kink within 2h (relu) shows up as a large trunc and fails that check instead of passing loosely.
struct fd_result {
    double diff, tol, scale;
};

template <class F>
fd_result central_difference(const F& f, double analytic, double f_round, double grad_scale, double input_ratio)
{
    const double h = 1e-5;
    const double d1 = (f(h) - f(-h)) / (2 * h), d2 = (f(2 * h) - f(-2 * h)) / (4 * h);
    const double trunc = std::abs(d2 - d1) / 3.0;
    return {std::abs(d1 - analytic), 2.0 * (trunc + 2.0 * f_round / h), grad_scale + std::abs(f(0.0)) * input_ratio};
}

inline void require_fd(const fd_result& r)
{
    CAPTURE(r.diff, r.tol, r.scale);
    REQUIRE(r.tol <= 1e-4 * r.scale);
    REQUIRE(r.diff <= r.tol);
}

/// Moves every entry at least `margin` away from 0 (keeps the sign): finite differences of relu then
/// never straddle its kink.
inline row_matrix<double> off_zero(row_matrix<double> x, double margin = 0.02)
{
    x = (x.array() < 0).select(x.array() - margin, x.array() + margin).matrix();
    return x;
}

inline double dot(const row_matrix<double>& a, const row_matrix<double>& b) { return (a.array() * b.array()).sum(); }

/// \brief Exact ∂L/∂b (one head, double) from the explicit formula with the true weights W = exp(b), and
/// a bound on the error of a backward computed in S.
///
/// With A = Ψ Κᵀ, the seed (g, g_den) of reference::kernel_attention_backward and dA = g Vᵀ + g_den 1ᵀ,
/// ∂L/∂b_t = Σ_{(i, j): clip(t_ij) = t} W_ij A_ij dA_ij. Error (first order, Higham §3.5): every path forms
/// A_ij and dA_ij as sums of at most `terms` products (M or Ex, plus the FFT's depth) and adds the N·Nk
/// pair terms in nested sums of depth <= N + Nk, so with γ = 2·(terms + N + Nk)·u,
///     |δ∂L/∂b_t| <= γ Σ_{pairs at t} |W_ij| (|ψ_i|·|κ_j|) (|g_i|·|v_j| + |g_den_i|) · κ_g
/// where κ_g >= 1 covers the seed's own relative error (sum: 1 + 2 max_i (Â1)_i/|den_i + eps|, the
/// denominator's rounding carried into g and g_den; rms: 1 + 3 max_i ‖Â|V|‖_i/‖num_i‖; none: 1). The bound
/// returned is the 2-norm of the per-offset bounds times a safety factor 2.
struct bias_reference {
    vector<double> exact;
    double bound = 0;
};

template <class Attention, class S>
bias_reference reference_bias_gradient(const Attention& attn, const row_matrix<S>& q, const row_matrix<S>& k,
                                       const row_matrix<S>& vs, const row_matrix<S>& douts, index t_max, index extra)
{
    const double u = unit_roundoff<S>();
    const row_matrix<double> v = vs.template cast<double>(), dout = douts.template cast<double>();
    const auto& opt = attn.opts();
    const row_matrix<double> psi = attn.features(q, role::query).template cast<double>();
    const row_matrix<double> kappa = attn.features(k, role::key).template cast<double>();
    const row_matrix<double> w = attn.mixing_matrix(q.rows(), k.rows()).template cast<double>();
    const index n = q.rows(), nk = k.rows(), e = v.cols();
    const row_matrix<double> a = psi * kappa.transpose(), aw = (a.array() * w.array()).matrix();
    const row_matrix<double> ahat = ((psi.cwiseAbs() * kappa.cwiseAbs().transpose()).array() * w.cwiseAbs().array()).matrix();
    const row_matrix<double> num = aw * v;
    const vector<double> den = aw.rowwise().sum();
    row_matrix<double> g = dout;
    vector<double> g_den = vector<double>::Zero(n);
    double kappa_g = 1.0;
    for (index i = 0; i < n; ++i) {
        if (opt.norm == normalization::sum) {
            const double d = den[i] + double(opt.eps);
            g.row(i) = dout.row(i) / d;
            g_den[i] = -dout.row(i).dot(num.row(i)) / (d * d);
            kappa_g = std::max(kappa_g, 1.0 + 2.0 * ahat.row(i).sum() / std::abs(d));
        } else if (opt.norm == normalization::rms) {
            const double r = std::sqrt(num.row(i).squaredNorm() / double(e) + double(opt.eps));
            const Eigen::RowVectorXd o = num.row(i) / r;
            g.row(i) = (dout.row(i) - o * (dout.row(i).dot(o) / double(e))) / r;
            if (num.row(i).norm() > 0) kappa_g = std::max(kappa_g, 1.0 + 3.0 * (ahat.row(i) * v.cwiseAbs()).norm() / num.row(i).norm());
        }
    }
    const row_matrix<double> da = g * v.transpose() + g_den * vector<double>::Ones(nk).transpose();
    const row_matrix<double> da_abs = g.cwiseAbs() * v.cwiseAbs().transpose() + g_den.cwiseAbs() * vector<double>::Ones(nk).transpose();
    bias_reference out;
    out.exact = vector<double>::Zero(2 * t_max - 1);
    vector<double> bound = vector<double>::Zero(2 * t_max - 1);
    for (index i = 0; i < n; ++i)
        for (index j = 0; j < nk; ++j) {
            const index t = std::clamp<index>(j - i, -(t_max - 1), t_max - 1) + t_max - 1;
            out.exact[t] += aw(i, j) * da(i, j);
            bound[t] += ahat(i, j) * da_abs(i, j);
        }
    const index terms = psi.cols() + e + 1 + n + nk + extra + 4;
    out.bound = 2.0 * (2.0 * terms * u) * kappa_g * bound.norm();
    return out;
}

} // namespace test
