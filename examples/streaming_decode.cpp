// Streaming decode: prefill a prompt, then generate token by token with the decoder's constant-size state.
// The per-token time stays flat as the position grows (O(M·E) work per token, whatever the history).
//   ./build/release/examples/streaming_decode [steps]
#include <linrpe.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv)
{
    using namespace linrpe;
    const linrpe::index batch = 1, heads = 8, width = 64, prompt = 512;
    const linrpe::index steps = argc > 1 ? std::atol(argv[1]) : 16384;

    options<float> opt;
    opt.mask = masking::causal;
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> attn({}, {}, opt);
    auto dec = attn.decoder(batch, heads);

    // A stand-in for the model: projections of the previous output would go here.
    const random::philox_stream noise(1, random::purpose::user);
    std::vector<float> q(batch * heads * prompt * width), k(q.size()), v(q.size()), out(q.size());
    noise.fill_normal(0, q.data(), static_cast<linrpe::index>(q.size()));
    noise.fill_normal(q.size(), k.data(), static_cast<linrpe::index>(k.size()));
    noise.fill_normal(2 * q.size(), v.data(), static_cast<linrpe::index>(v.size()));
    dec.prefill(view_bhnd<const float>(q.data(), batch, heads, prompt, width), view_bhnd<const float>(k.data(), batch, heads, prompt, width),
                view_bhnd<const float>(v.data(), batch, heads, prompt, width), view_bhnd(out.data(), batch, heads, prompt, width));
    std::printf("prefilled %ld tokens for %ld heads; generating %ld tokens\n", long(prompt), long(heads), long(steps));
    std::printf("%12s %16s\n", "position", "us per token");

    std::vector<float> qt(batch * heads * width), kt(qt.size()), vt(qt.size()), ot(qt.size());
    using clock_type = std::chrono::steady_clock;
    auto t0 = clock_type::now();
    linrpe::index window = 0;
    for (linrpe::index s = 0; s < steps; ++s) {
        for (std::size_t i = 0; i < qt.size(); ++i) { // next token's q, k, v from the last output (toy model)
            qt[i] = 0.5f * ot[i] + 0.1f * static_cast<float>(noise.normal(10000000 + 3 * (s * qt.size() + i)));
            kt[i] = 0.5f * ot[i] + 0.1f * static_cast<float>(noise.normal(10000001 + 3 * (s * qt.size() + i)));
            vt[i] = static_cast<float>(noise.normal(10000002 + 3 * (s * qt.size() + i)));
        }
        dec.step(view_bhnd<const float>(qt.data(), batch, heads, 1, width), view_bhnd<const float>(kt.data(), batch, heads, 1, width),
                 view_bhnd<const float>(vt.data(), batch, heads, 1, width), view_bhnd(ot.data(), batch, heads, 1, width));
        if (++window == steps / 8 || s + 1 == steps) {
            const double us = std::chrono::duration<double, std::micro>(clock_type::now() - t0).count() / double(window);
            std::printf("%12ld %16.2f\n", long(dec.position()), us);
            window = 0;
            t0 = clock_type::now();
        }
    }
    return 0;
}
