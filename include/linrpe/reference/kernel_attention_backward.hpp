#pragma once
/// \file
/// \brief reference::kernel_attention_backward: exact gradients of reference::kernel_attention.

#include "../errors.hpp"
#include "../types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>

namespace linrpe {
namespace reference {

/// Gradients of ⟨dout, kernel_attention(ψ, κ, V, W)⟩ with respect to ψ (N, M), κ (Nk, M) and V (Nk, E).
struct kernel_attention_gradients {
    row_matrix<double> dpsi, dkappa, dv;
};

/// \brief The vector–Jacobian product of reference::kernel_attention for the seed `dout` (N, E), written
/// out in double with the N × Nk matrices materialized (docs/design.md §16):
///
///     A = (Ψ Κᵀ) ⊙ W,  num = A V,  den = A 1
///     seed  sum:  out = num / (den + eps),  g = dout / (den + eps),  g_den = −rowsum(dout ⊙ out) / (den + eps)
///           none: g = dout,  g_den = 0
///           rms:  r = sqrt(mean_e num² + eps),  out = num / r,  g = (dout − out · mean_e(dout ⊙ out)) / r
///     dA = g Vᵀ + g_den 1ᵀ,   dΨ = (W ⊙ dA) Κ,   dΚ = (W ⊙ dA)ᵀ Ψ,   dV = Aᵀ g
///
/// The simplest correct computation, to check every fast backward (and checked itself against finite
/// differences in the tests). O(N·Nk·(M + E)) time, O(N·Nk) memory.
template <class DerivedP, class DerivedK, class DerivedV, class DerivedW, class DerivedD>
kernel_attention_gradients kernel_attention_backward(const Eigen::MatrixBase<DerivedP>& psi,
                                                     const Eigen::MatrixBase<DerivedK>& kappa,
                                                     const Eigen::MatrixBase<DerivedV>& v,
                                                     const Eigen::MatrixBase<DerivedW>& w,
                                                     const Eigen::MatrixBase<DerivedD>& dout, normalization norm,
                                                     double eps)
{
    if (kappa.cols() != psi.cols()) detail::fail("kappa columns", psi.cols(), kappa.cols());
    if (v.rows() != kappa.rows()) detail::fail("v rows", kappa.rows(), v.rows());
    if (w.rows() != psi.rows() || w.cols() != kappa.rows())
        detail::fail("w shape", detail::shape(psi.rows(), kappa.rows()), detail::shape(w.rows(), w.cols()));
    if (dout.rows() != psi.rows() || dout.cols() != v.cols())
        detail::fail("dout shape", detail::shape(psi.rows(), v.cols()), detail::shape(dout.rows(), dout.cols()));
    const row_matrix<double> p = psi.template cast<double>(), k = kappa.template cast<double>(),
                             vd = v.template cast<double>(), wd = w.template cast<double>(),
                             dy = dout.template cast<double>();
    const index n = p.rows(), e = vd.cols();
    const row_matrix<double> a = ((p * k.transpose()).array() * wd.array()).matrix(); // (N, Nk)
    const row_matrix<double> num = a * vd;                                            // (N, E)
    row_matrix<double> g(n, e);                                                        // (N, E)
    vector<double> g_den = vector<double>::Zero(n);                                    // (N)
    for (index i = 0; i < n; ++i) {
        switch (norm) {
        case normalization::sum: {
            const double d = a.row(i).sum() + eps;
            g.row(i) = dy.row(i) / d;
            g_den[i] = -dy.row(i).dot(num.row(i) / d) / d;
            break;
        }
        case normalization::rms: {
            const double r = std::sqrt(num.row(i).squaredNorm() / double(std::max<index>(e, 1)) + eps);
            const Eigen::RowVectorXd out_i = num.row(i) / r;
            const double mean = dy.row(i).dot(out_i) / double(std::max<index>(e, 1));
            g.row(i) = (dy.row(i) - mean * out_i) / r;
            break;
        }
        case normalization::none:
        default:
            g.row(i) = dy.row(i);
            break;
        }
    }
    const row_matrix<double> da = g * vd.transpose() + g_den * vector<double>::Ones(k.rows()).transpose(); // (N, Nk)
    const row_matrix<double> ds = (da.array() * wd.array()).matrix();                                         // (N, Nk)
    kernel_attention_gradients out;
    out.dpsi = ds * k;               // (N, M)
    out.dkappa = ds.transpose() * p; // (Nk, M)
    out.dv = a.transpose() * g;      // (Nk, E)
    return out;
}

} // namespace reference
} // namespace linrpe
