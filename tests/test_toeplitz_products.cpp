// Toeplitz products Y = C X (C_ij = c_{j−i+delta}) by FFT (each backend) and by the banded split, against
// the explicit matrix product in double.
#include "support_toeplitz.hpp"

#include <linrpe/detail/toeplitz_banded.hpp>
#include <linrpe/detail/toeplitz_fft.hpp>
#include <linrpe/fft/backend.hpp>

#include <catch2/catch.hpp>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_toeplitz_products {

namespace {
using namespace linrpe;
using linrpe::index;
using namespace toeplitz_test;

// Relative Frobenius error of an FFT-based product: the transforms add ≈ eps·log2 L·‖c‖₂·‖x‖₂ per column
// (Higham, Accuracy and Stability of Numerical Algorithms, §24.1), and ‖c‖₂‖x‖₂/‖Cx‖₂ <= √(N + Nk) for
// positive c and inputs of either sign at worst-case cancellation; with 3 transforms (ĥ, forward, inverse)
// c = 3·2 = 6 (factor 2 for complex multiply-add roundings). The banded product is a blocked sum of
// Nk products: ≈ (Nk + 2)·eps per entry relative to Σ|c||x|, and Σ|c||x| / |Cx| is again <= √(N + Nk).
double fft_bound(double e, index n, index nk, index length)
{
    return 6.0 * e * std::log2(double(std::max<index>(length, 2))) * std::sqrt(double(n + nk));
}
double banded_bound(double e, index n, index nk) { return 2.0 * e * double(nk + 2) * std::sqrt(double(n + nk)); }

// Returns the FFT length the product used (the caller checks it never drops below N + Nk − 1).
template <class S, class Backend>
index check_fft(index n, index nk, index delta, bool causal, index requested_length, std::uint64_t seed)
{
    const index t_max = std::max<index>(n, nk) + 3;
    const auto w = random_weights<S>(t_max, seed);
    const row_matrix<S> x = uniform<S>(nk, 5, seed + 1);
    row_matrix<S> y(n, 5);
    detail::toeplitz_product_fft<S, Backend>(w, x, y, delta, causal, requested_length);
    const row_matrix<double> ref = explicit_toeplitz(w, n, nk, delta, causal) * x.template cast<double>();
    const index length = detail::fft_length_for<Backend>(std::max<index>({requested_length, n + nk - 1, 2}));
    const double err = rel_err(y, ref), tol = fft_bound(eps<S>(), n, nk, length);
    CAPTURE(Backend::name, n, nk, delta, causal, requested_length, length, err, tol);
    CHECK(err <= tol);
    return length;
}

TEMPLATE_TEST_CASE("FFT Toeplitz product equals the explicit product", "[toeplitz][fft]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = GENERATE(1, 2, 3, 7, 64, 1000);
    const int shape = GENERATE(0, 1, 2); // Nk = N, N + 5, max(1, N / 2)
    const index nk = shape == 0 ? n : shape == 1 ? n + 5 : std::max<index>(1, n / 2);
    const bool causal = GENERATE(false, true);
    const index delta = GENERATE(0, -2, 3);
    index pow2 = 1;
    while (pow2 < n + nk - 1) pow2 *= 2;
    // L = N + Nk − 1 exactly (fast_length rounds up only to a 5-smooth size, which is also exact), a power
    // of two, and a requested length below N + Nk − 1, which must be raised, never used.
    for (const index length : {n + nk - 1, pow2, std::max<index>(1, n / 2)}) {
        // A circulant shorter than N + Nk − 1 would wrap later keys onto earlier queries.
        REQUIRE(check_fft<S, fft::eigen>(n, nk, delta, causal, length, 100 + n + nk) >= n + nk - 1);
#if defined(LINRPE_HAVE_FFTW)
        REQUIRE(check_fft<S, fft::fftw>(n, nk, delta, causal, length, 100 + n + nk) >= n + nk - 1);
#endif
    }
}

TEST_CASE("FFT lengths are 5-smooth and never below the request", "[toeplitz][fft]")
{
    CHECK(detail::fft_fast_length(1) == 1);
    CHECK(detail::fft_fast_length(7) == 8);
    CHECK(detail::fft_fast_length(1999) == 2000);
    CHECK(detail::fft_fast_length(2049) == 2160);
    CHECK(detail::fft_fast_length(65535) == 65536);
    for (index n = 1; n < 3000; n += 37) {
        CHECK(detail::fft_fast_length(n) >= n);
        CHECK(detail::fft_length_for<fft::eigen>(n) >= n);
        CHECK(detail::fft_length_for<fft::eigen>(n) <= 2 * std::max<index>(n, 2));
    }
    // kissfft's radix-2 stage is slow: 2^17 = 2·4^8 is avoided for a 5-smooth length with an even power of 2.
    CHECK(detail::fft_length_for<fft::eigen>(131071) != 131072);
    CHECK(detail::fft_length_for<fft::eigen>(65535) == 65536);
}

TEMPLATE_TEST_CASE("Banded Toeplitz product equals the explicit product", "[toeplitz][banded]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = GENERATE(1, 2, 3, 7, 64, 1000);
    const int shape = GENERATE(0, 1, 2); // Nk = N, N + 5, max(1, N / 2)
    const index nk = shape == 0 ? n : shape == 1 ? n + 5 : std::max<index>(1, n / 2);
    const index t_max = GENERATE(1, 2, 5, 70, 2000);
    const bool causal = GENERATE(false, true);
    const index delta = GENERATE(0, -3, 4);
    const auto w = random_weights<S>(t_max, 7 + t_max);
    const row_matrix<S> x = uniform<S>(nk, 3, 11 + n);
    row_matrix<S> y(n, 3);
    detail::toeplitz_product_banded<S>(w, x, y, delta, causal);
    const row_matrix<double> ref = explicit_toeplitz(w, n, nk, delta, causal) * x.template cast<double>();
    const double err = rel_err(y, ref), tol = banded_bound(eps<S>(), n, nk);
    CAPTURE(n, nk, t_max, causal, delta, err, tol);
    CHECK(err <= tol);
}

#if defined(LINRPE_HAVE_FFTW)
TEMPLATE_TEST_CASE("FFTW and Eigen FFT backends agree to rounding", "[toeplitz][fft][fftw]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = 777, nk = 801;
    const auto w = random_weights<S>(900, 5);
    const row_matrix<S> x = uniform<S>(nk, 9, 6);
    row_matrix<S> a(n, 9), b(n, 9);
    detail::toeplitz_product_fft<S, fft::eigen>(w, x, a, 2, false);
    detail::toeplitz_product_fft<S, fft::fftw>(w, x, b, 2, false);
    // Both are within fft_bound of the exact product, hence within twice it of each other.
    const double err = rel_err(a, b), tol = 2.0 * fft_bound(eps<S>(), n, nk, 2 * (n + nk));
    CAPTURE(err, tol);
    CHECK(err <= tol);
}
#endif

} // namespace
} // namespace test_toeplitz_products
