#pragma once
// IWYU pragma: private
/// \file
/// \brief The last stage of every mixer: out = num / (den + eps) (sum), num (none), or num / rms(num) (rms).

#include "../types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>

namespace linrpe {
namespace detail {

/// \brief Normalizes the numerator rows in `out` (rows, E) in place; `den` (rows) is read under `sum` only.
///
///     sum:  out_i = num_i / (den_i + eps)
///     none: out_i = num_i
///     rms:  out_i = num_i / sqrt(mean_e num_ie² + eps)
///
/// rms squares the numerator, which overflows once |num| exceeds ~1.8e19 (float) and would turn the row into
/// 0. Rows with max_e |num_ie| = m > 1 are first scaled by the power of two s = 2^−k with m·s in [1/2, 1)
/// (exact: only the exponents change), and then
///     num_i / sqrt(mean num_i² + eps) = (s·num_i) / sqrt(mean (s·num_i)² + s²·eps)
/// so eps keeps its meaning and the result is the same up to rounding (bit for bit unless s²·eps underflows,
/// where eps is negligible anyway). Rows with m <= 1 cannot overflow and take the formula as is.
/// Cost: two more passes over the rows (max and scale).
template <class S>
void normalize_rows(Eigen::Ref<row_matrix<S>> out, const vector<S>* den, normalization norm, S eps)
{
    switch (norm) {
    case normalization::sum:
        out.array().colwise() /= (den->array() + eps);
        break;
    case normalization::none:
        break;
    case normalization::rms: {
        if (out.cols() == 0) break;
        vector<S> pow2 = vector<S>::Ones(out.rows()); // (rows): s_i
        for (index i = 0; i < out.rows(); ++i) {
            const S m = out.row(i).cwiseAbs().maxCoeff();
            if (m > S(1) && std::isfinite(m)) {
                int k = 0;
                std::frexp(m, &k); // m = f·2^k, f in [1/2, 1)
                pow2[i] = std::ldexp(S(1), -k);
            }
        }
        out.array().colwise() *= pow2.array(); // exact
        const vector<S> scale =
            (out.rowwise().squaredNorm().array() / static_cast<S>(out.cols()) + eps * pow2.array().square()).rsqrt();
        out.array().colwise() *= scale.array();
        break;
    }
    }
}

/// \brief Seed of the backward under `sum` (docs/design.md §16): for rows with denominator den and
/// dot_i = dout_i · num_i, out = num / (den + eps) gives ∂/∂num = inv ⊙ dout and ∂/∂den = g_den with
///
///     inv_i = 1 / (den_i + eps),   g_den_i = −dot_i · inv_i²   (= −rowsum(dout ⊙ out)_i / (den_i + eps))
///
/// The caller scales its dout-based rows by inv (the mixers form dot without the numerator, see causal_mixer).
template <class S>
void sum_seed(const vector<S>& den, const vector<S>& dot, S eps, vector<S>& inv, Eigen::Ref<vector<S>> g_den)
{
    inv = (den.array() + eps).inverse().matrix();
    g_den = (-dot.array() * inv.array().square()).matrix();
}

/// \brief Seed of the backward under `rms`: out = num / r, r = sqrt(mean_e num² + eps), so
///
///     ∂out_e/∂num_f = δ_ef / r − num_e num_f / (E r³)   ⇒   g = (dout − out · mean_e(dout ⊙ out)) / r
///
/// for numerator rows `num` and seed rows `dout` (rows, E); writes g (rows, E).
template <class S>
void rms_seed(const Eigen::Ref<const row_matrix<S>>& num, const Eigen::Ref<const row_matrix<S>>& dout,
              Eigen::Ref<row_matrix<S>> g, S eps)
{
    const S inv_e = S(1) / static_cast<S>(std::max<index>(num.cols(), 1));
    const vector<S> inv_r = (num.rowwise().squaredNorm().array() * inv_e + eps).rsqrt().matrix(); // (rows)
    const row_matrix<S> out = (num.array().colwise() * inv_r.array()).matrix();                  // (rows, E)
    const vector<S> mean = (dout.array() * out.array()).rowwise().sum().matrix() * inv_e;        // (rows)
    g = ((dout.array() - out.array().colwise() * mean.array()).colwise() * inv_r.array()).matrix();
}

} // namespace detail
} // namespace linrpe
