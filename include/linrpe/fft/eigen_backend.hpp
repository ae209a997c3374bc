#pragma once
/// \file
/// \brief fft::eigen: batched complex DFTs through Eigen's FFT module (kissfft), the default backend.

#include "../types.hpp"

#include <unsupported/Eigen/FFT>

#include <complex>

namespace linrpe {
namespace fft {

/// \brief FFT backend over `<unsupported/Eigen/FFT>` (kissfft: radices 2, 3, 4, 5 and a generic one).
///
/// Header-only and MPL2, so it is the default. Measured here (one core, float, complex length L): about
/// 5 GFLOP/s counted as 5·L·log2 L, i.e. 3–10× slower than FFTW; see fft::fftw.
struct eigen {
    static constexpr const char* name = "eigen";

    /// \brief `count` unnormalized complex DFTs of `length`, arrays `dist` elements apart, from `in` to `out`.
    /// Both directions are unscaled (the caller folds 1/L into its kernel spectrum).
    template <class S>
    class transform {
    public:
        transform(index length, index count, index dist, const std::complex<S>* in, std::complex<S>* out, bool inverse)
            : m_length(length), m_count(count), m_dist(dist), m_in(in), m_out(out), m_inverse(inverse)
        {
            m_fft.SetFlag(Eigen::FFT<S>::Unscaled);
        }
        void execute()
        {
            for (index p = 0; p < m_count; ++p) {
                if (m_inverse) m_fft.inv(m_out + p * m_dist, m_in + p * m_dist, m_length);
                else m_fft.fwd(m_out + p * m_dist, m_in + p * m_dist, m_length);
            }
        }

    private:
        index m_length, m_count, m_dist;
        const std::complex<S>* m_in;
        std::complex<S>* m_out;
        bool m_inverse;
        Eigen::FFT<S> m_fft;
    };
};

} // namespace fft
} // namespace linrpe
