// Quickstart: one short function per family. Each builds an attention, runs it on random (N, D) inputs of
// one head and prints the output norm; see the README for the formulas and options.
// Only the headers of the families used here: <linrpe.hpp> includes every family and compiles slower.
#include <linrpe/feature_maps/elu_plus_one.hpp>
#include <linrpe/feature_maps/favor.hpp>
#include <linrpe/linear_attention.hpp>
#include <linrpe/positional/lrpe.hpp>
#include <linrpe/positional/sine_spe.hpp>
#include <linrpe/positional/toeplitz_rpe.hpp>

#include <cstdio>

using linrpe::row_matrix;
using Q = row_matrix<float>;

namespace {
const Q q = Q::Random(512, 64) * 0.5f, k = Q::Random(512, 64) * 0.5f, v = Q::Random(512, 64);

void plain()  // Katharopoulos et al. 2020: elu+1 features, causal, sum normalization
{
    linrpe::options<float> opt;
    opt.mask = linrpe::masking::causal;
    linrpe::linear_attention<linrpe::feature_maps::elu_plus_one, linrpe::positional::none, float> attn({}, {}, opt);
    std::printf("none           |out| = %.4f\n", attn(q, k, v).norm());
}

void lrpe()  // Qin et al. 2023: RoPE as a unitary post-feature transform; signed scores → rms
{
    linrpe::options<float> opt;
    opt.mask = linrpe::masking::causal;
    opt.norm = linrpe::normalization::rms;
    linrpe::linear_attention<linrpe::feature_maps::elu_plus_one, linrpe::positional::lrpe<float>, float> attn(
        {}, linrpe::positional::lrpe<float>::rope(/*dim=*/64), opt);
    std::printf("LRPE rotate    |out| = %.4f\n", attn(q, k, v, /*head=*/0, /*first_position=*/1000).norm());
}

void spe()  // Liutkus et al. 2021: gated sineSPE codes before FAVOR+ features on R = 64 realizations
{
    linrpe::positional::sine_spe<float> pe(/*heads=*/1, /*D=*/64, /*K=*/5, /*R=*/64, /*seed=*/1, /*gated=*/true);
    linrpe::linear_attention<linrpe::feature_maps::favor, linrpe::positional::sine_spe<float>, float> attn(
        linrpe::feature_maps::favor(/*input_dim = R*/ 64, /*M=*/128, /*seed=*/2), pe);
    std::printf("sineSPE        |out| = %.4f   P_0(3) = %.4f\n", attn(q, k, v).norm(), attn.positional().expected_kernel(0, 0, 3));
}

void toeplitz()  // Luo et al. 2021: weights exp(b_{j-i}), exact, by the cheapest algorithm
{
    linrpe::positional::toeplitz_rpe<float> rpe(/*heads=*/1, /*t_max=*/64);
    for (linrpe::index t = -63; t < 64; ++t) rpe.bias(0, t + 63) = -0.05f * float(t < 0 ? -t : t);
    linrpe::options<float> opt;
    opt.mask = linrpe::masking::causal;
    opt.toeplitz = linrpe::toeplitz_algorithm::automatic;
    linrpe::linear_attention<linrpe::feature_maps::elu_plus_one, linrpe::positional::toeplitz_rpe<float>, float> attn({}, rpe, opt);
    std::printf("Toeplitz RPE   |out| = %.4f\n", attn(q, k, v).norm());
}
} // namespace

int main()
{
    plain();
    lrpe();
    spe();
    toeplitz();
    return 0;
}
