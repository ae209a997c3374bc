#pragma once
/// \file
/// \brief reference::kernel_attention: explicit O(N·Nk) kernel attention from ψ, κ, V and any weights W.

#include "../errors.hpp"
#include "../types.hpp"

#include <Eigen/Core>

#include <cmath>

namespace linrpe {
namespace reference {

/// \brief The one formula of docs/design.md §2 written out, in double, with the N × Nk score matrix materialized:
///
///     A = (Ψ Κᵀ) ⊙ W,  num = A V,   out = num / (A 1 + eps) | num | num / sqrt(mean_e num² + eps)
///
/// The simplest correct computation; every fast path is tested against it. O(N·Nk·(M + E)) time and
/// O(N·Nk) memory.
template <class DerivedP, class DerivedK, class DerivedV, class DerivedW>
row_matrix<double> kernel_attention(const Eigen::MatrixBase<DerivedP>& psi, const Eigen::MatrixBase<DerivedK>& kappa,
                                    const Eigen::MatrixBase<DerivedV>& v, const Eigen::MatrixBase<DerivedW>& w,
                                    normalization norm, double eps)
{
    if (kappa.cols() != psi.cols()) detail::fail("kappa columns", psi.cols(), kappa.cols());
    if (v.rows() != kappa.rows()) detail::fail("v rows", kappa.rows(), v.rows());
    if (w.rows() != psi.rows() || w.cols() != kappa.rows())
        detail::fail("w shape", detail::shape(psi.rows(), kappa.rows()), detail::shape(w.rows(), w.cols()));
    const row_matrix<double> a =
        ((psi.template cast<double>() * kappa.template cast<double>().transpose()).array() * w.template cast<double>().array())
            .matrix();                                     // (N, Nk)
    const row_matrix<double> num = a * v.template cast<double>(); // (N, E)
    switch (norm) {
    case normalization::sum:
        return (num.array().colwise() / (a.rowwise().sum().array() + eps)).matrix();
    case normalization::rms: {
        row_matrix<double> out = num;
        for (index i = 0; i < out.rows(); ++i)
            out.row(i) /= std::sqrt(num.row(i).squaredNorm() / double(std::max<index>(num.cols(), 1)) + eps);
        return out;
    }
    case normalization::none:
    default:
        return num;
    }
}

} // namespace reference
} // namespace linrpe
