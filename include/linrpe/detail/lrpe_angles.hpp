#pragma once
// IWYU pragma: private
/// \file
/// \brief Position angles s·θ for LRPE: exact products, range reduction, and blocked cos/sin tables.

#include "../errors.hpp"
#include "../types.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace linrpe {
namespace detail {

/// Largest position p whose angles p·θ are exact: every integer up to 2^53 is a double, so p·θ = hi + lo
/// exactly (fma) and reduced_angle reduces it exactly. Beyond, double(p) rounds (by up to 512 at 2^62) and
/// the angle is off by that many turns' worth of θ, so LRPE and sineSPE refuse such positions.
inline constexpr index max_exact_position = (index(1) << 53) - 1;

/// Refuses positions outside [0, max_exact_position] among first .. first + count − 1 (see max_exact_position).
inline void check_angle_positions(index first, index count)
{
    if (first < 0) fail("first_position", "a value >= 0", first);
    if (count > 0 && first > max_exact_position - (count - 1))
        fail("first_position + rows − 1 (last position: angles are exact only up to 2^53 − 1)",
             concat("a value <= ", max_exact_position), concat(first, " + ", count - 1));
}

/// x − nearbyint(x), in [−1/2, 1/2]: exact for every double (the fractional part is representable).
inline double centered_fraction(double x) { return x - std::nearbyint(x); }

/// \brief r ≡ p·θ (mod 2π) with |r| ≲ π, for an integer position |p| <= 2^53 − 1 and a finite θ.
///
/// Why: cos(p·θ) for p ~ 10^6 in float would lose every digit to the rounding of p·θ (ulp(10^6) ≈ 0.06
/// in float), and even a double product p·θ carries ~1e-10 absolute error. Here p·θ = hi + lo exactly
/// (fma). For |k| < 2^29 turns, hi − k·c1 is exact because both are multiples of ulp(c1) = 2^−50 and the
/// difference is < 4 (Cody–Waite with a one-word head); c2 carries the rest of 2π. Beyond (up to 2^52 turns,
/// e.g. θ = 1 at p = 2^40), the reduction runs in turns: θ/(2π) = t1 + t2 to ~2^−104 relative (t1 the
/// rounded quotient, whose residual θ − t1·c1 is exact), p·t1 = a1 + a2 exactly (fma), and the fractional
/// parts of a1, a2 and p·t2 are exact; their sum errs by <= 2^−53 turns and p·t2 by p·t·2^−106 <= 2^−53 turns
/// for p < 2^53, |θ| <= 4. Either way the result is within a few ulp of π of the true residue.
inline double reduced_angle(double p, double theta)
{
    constexpr double two_pi_hi = 6.28318530717958623200e+00; // fl(2π)
    constexpr double two_pi_lo = 2.44929359829470635445e-16; // 2π − fl(2π)
    constexpr double inv_two_pi = 1.59154943091895335769e-01;
    const double hi = p * theta;
    const double lo = std::fma(p, theta, -hi); // hi + lo == p·θ exactly
    const double k = std::nearbyint(hi * inv_two_pi);
    if (std::abs(k) < 536870912.0) { // 2^29
        double r = std::fma(-k, two_pi_hi, hi); // exact, see above
        r = std::fma(-k, two_pi_lo, r);
        return r + lo;
    }
    if (!std::isfinite(hi)) return hi;
    const double t1 = theta / two_pi_hi;
    const double t2 = (std::fma(-t1, two_pi_hi, theta) - t1 * two_pi_lo) / two_pi_hi; // θ/(2π) − t1
    const double a1 = p * t1, a2 = std::fma(p, t1, -a1);                                // a1 + a2 == p·t1
    const double turns = centered_fraction(centered_fraction(a1) + (centered_fraction(a2) + centered_fraction(p * t2)));
    return std::fma(turns, two_pi_hi, turns * two_pi_lo);
}

/// \brief Calls body(r0, rows, cos, sin) for consecutive row blocks of a call covering positions
/// first .. first + n − 1, with cos/sin the (rows, count) row-major tables of cos((first + r)·θ_j),
/// sin((first + r)·θ_j) in S, for r in [r0, r0 + rows).
///
/// Cost: 7·`count` reduced sin/cos in double per block of 64 rows plus a few double complex products per
/// (row, frequency): e^{i(a + r)θ} = e^{iaθ}·e^{i8jθ}·e^{ilθ} for r = 8j + l < 64, where e^{ilθ} (l < 8) and
/// e^{i8jθ} (j < 8) come from the directly evaluated powers 1, 2, 4 (resp. 8, 16, 32) by at most two
/// products; every factor is accurate to ~1 ulp, so the table is accurate to a few double ulps at any
/// position (never a float angle, never an accumulated recurrence). The entry of row r depends on
/// (first, r) only, never on n, so calls of different lengths from the same first position agree bit for
/// bit. Why not 64 direct evaluations: the mixers call the hooks per chunk of 64 rows, and a backward
/// evaluates the tables twice per block (the features and their VJP), so sin/cos would rival the GEMMs.
template <class S, class Body>
void for_each_angle_block(const double* theta, index count, index first, index n, Body&& body)
{
    constexpr index block = 64, fine = 8;
    if (n <= 0) return;
    const index k = std::min(block, n);
    // e^{i·step·mθ} for m < 8 from the three direct powers m = 1, 2, 4 (m = 0: exactly 1; 3, 5, 6: one
    // product; 7 = 3·4: two), into c[m], s[m].
    const auto powers = [](double step, double th, double* c, double* s) {
        c[0] = 1.0;
        s[0] = 0.0;
        for (const int m : {1, 2, 4}) {
            const double a = reduced_angle(step * double(m), th);
            c[m] = std::cos(a);
            s[m] = std::sin(a);
        }
        for (const int m : {3, 5, 6, 7}) {
            const int hi = m & 4 ? 4 : 2, lo = m - hi; // 3 = 2 + 1, 5 = 4 + 1, 6 = 4 + 2, 7 = 4 + 3
            c[m] = c[hi] * c[lo] - s[hi] * s[lo];
            s[m] = s[hi] * c[lo] + c[hi] * s[lo];
        }
    };
    std::vector<double> base_c(static_cast<std::size_t>(k * count)), base_s(base_c.size()); // (K, count)
    for (index j = 0; j < count; ++j) {
        double fc[fine], fs[fine], mc[fine], ms[fine];
        powers(1.0, theta[j], fc, fs);
        powers(double(fine), theta[j], mc, ms);
        for (index r = 0; r < k; ++r) {
            const index hi = r / fine, lo = r % fine;
            base_c[std::size_t(r * count + j)] = hi == 0 ? fc[lo] : mc[hi] * fc[lo] - ms[hi] * fs[lo];
            base_s[std::size_t(r * count + j)] = hi == 0 ? fs[lo] : ms[hi] * fc[lo] + mc[hi] * fs[lo];
        }
    }
    std::vector<double> anchor_c(static_cast<std::size_t>(count)), anchor_s(anchor_c.size());
    std::vector<S> tab_c(base_c.size()), tab_s(base_c.size()); // (K, count)
    for (index r0 = 0; r0 < n; r0 += k) {
        const index rows = std::min(k, n - r0);
        const double anchor = double(first + r0);
        for (index j = 0; j < count; ++j) {
            const double a = reduced_angle(anchor, theta[j]);
            anchor_c[std::size_t(j)] = std::cos(a);
            anchor_s[std::size_t(j)] = std::sin(a);
        }
        for (index r = 0; r < rows; ++r) {
            const double* bc = base_c.data() + r * count;
            const double* bs = base_s.data() + r * count;
            S* tc = tab_c.data() + r * count;
            S* ts = tab_s.data() + r * count;
            for (index j = 0; j < count; ++j) {
                tc[j] = static_cast<S>(anchor_c[std::size_t(j)] * bc[j] - anchor_s[std::size_t(j)] * bs[j]);
                ts[j] = static_cast<S>(anchor_s[std::size_t(j)] * bc[j] + anchor_c[std::size_t(j)] * bs[j]);
            }
        }
        body(r0, rows, static_cast<const S*>(tab_c.data()), static_cast<const S*>(tab_s.data()));
    }
}

} // namespace detail
} // namespace linrpe
