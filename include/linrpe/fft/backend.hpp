#pragma once
/// \file
/// \brief fft::default_backend: FFTW when the build enabled it (LINRPE_HAVE_FFTW), Eigen's FFT otherwise.

#include "eigen_backend.hpp"
#include "fftw_backend.hpp"

namespace linrpe {
namespace fft {

#if defined(LINRPE_HAVE_FFTW)
using default_backend = fftw;
#else
using default_backend = eigen;
#endif

} // namespace fft
} // namespace linrpe
