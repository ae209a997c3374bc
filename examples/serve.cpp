// Continuous batching: requests with prompts and generation lengths of random sizes share the slots of one
// decoder. A request is admitted into a free slot (its prompt prefilled while the other slots are
// mid-generation), all busy slots then step together, one token each, and a finished request leaves its
// slot to the next. Afterwards every request is replayed alone in a decoder of its own and compared
// token by token: slots never see each other, so the outputs must agree to the bit.
//   ./build/release/examples/serve [requests] [slots]
#include <linrpe.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {
using linrpe::index;
constexpr index heads = 4, width = 32;

using attention = linrpe::linear_attention<linrpe::feature_maps::elu_plus_one, linrpe::positional::lrpe<float>, float>;

// One request: its tokens' q, k, v as (tokens, H, D) rows, the outputs the server produced for them.
struct request {
    index prompt, total;
    std::vector<float> q, k, v, out;
    index next = 0; // next token to produce
};

linrpe::tensor_view<const float> rows(const std::vector<float>& x, index t0, index count)
{
    return linrpe::view_bnhd(x.data() + t0 * heads * width, 1, count, heads, width);
}
linrpe::tensor_view<float> rows(std::vector<float>& x, index t0, index count)
{
    return linrpe::view_bnhd(x.data() + t0 * heads * width, 1, count, heads, width);
}

// A stand-in for the model: the next token's q, k, v from the output of the previous one plus noise.
void next_token(request& r, std::mt19937& gen)
{
    std::normal_distribution<float> noise(0.f, 0.3f);
    const index t = r.next, n = heads * width;
    for (index i = 0; i < n; ++i) {
        const float last = r.out[std::size_t((t - 1) * n + i)];
        r.q[std::size_t(t * n + i)] = 0.5f * last + noise(gen);
        r.k[std::size_t(t * n + i)] = 0.5f * last + noise(gen);
        r.v[std::size_t(t * n + i)] = last + noise(gen);
    }
}

int run(int argc, char** argv)
{
    const index count = argc > 1 ? std::atol(argv[1]) : 24, slots = argc > 2 ? std::atol(argv[2]) : 6;
    linrpe::options<float> opt;
    opt.mask = linrpe::masking::causal;
    opt.norm = linrpe::normalization::rms; // RoPE scores are signed
    const attention attn({}, linrpe::positional::lrpe<float>::rope(width, heads), opt);

    std::mt19937 gen(2026);
    std::vector<request> reqs(static_cast<std::size_t>(count));
    for (auto& r : reqs) {
        r.prompt = 16 + index(gen() % 241);
        r.total = r.prompt + 8 + index(gen() % 121);
        const std::size_t size = std::size_t(r.total * heads * width);
        r.q.resize(size), r.k.resize(size), r.v.resize(size), r.out.resize(size);
        std::normal_distribution<float> normal;
        for (std::size_t i = 0; i < std::size_t(r.prompt * heads * width); ++i) r.q[i] = normal(gen), r.k[i] = normal(gen), r.v[i] = normal(gen);
    }

    auto dec = attn.decoder(slots, heads);
    std::vector<index> owner(static_cast<std::size_t>(slots), -1);
    std::vector<float> q(std::size_t(slots * heads * width)), k(q.size()), v(q.size()), out(q.size());
    index admitted = 0, finished = 0, steps = 0, tokens = 0;
    while (finished < count) {
        for (index s = 0; s < slots && admitted < count; ++s)
            if (owner[s] < 0) {
                request& r = reqs[std::size_t(admitted)];
                owner[s] = admitted++;
                dec.reset(s);
                dec.prefill(s, rows(r.q, 0, r.prompt), rows(r.k, 0, r.prompt), rows(r.v, 0, r.prompt), rows(r.out, 0, r.prompt));
                r.next = r.prompt;
            }
        // Gather the next token of every busy slot into (A, H, 1, D) buffers, step them, scatter the outputs.
        std::vector<index> active;
        for (index s = 0; s < slots; ++s)
            if (owner[s] >= 0) active.push_back(s);
        const std::size_t token = std::size_t(heads * width);
        for (std::size_t a = 0; a < active.size(); ++a) {
            request& r = reqs[std::size_t(owner[active[a]])];
            next_token(r, gen);
            std::memcpy(&q[a * token], &r.q[std::size_t(r.next) * token], token * sizeof(float));
            std::memcpy(&k[a * token], &r.k[std::size_t(r.next) * token], token * sizeof(float));
            std::memcpy(&v[a * token], &r.v[std::size_t(r.next) * token], token * sizeof(float));
        }
        const index n_active = index(active.size());
        dec.step(active, linrpe::view_bnhd<const float>(q.data(), n_active, 1, heads, width),
                 linrpe::view_bnhd<const float>(k.data(), n_active, 1, heads, width),
                 linrpe::view_bnhd<const float>(v.data(), n_active, 1, heads, width), linrpe::view_bnhd(out.data(), n_active, 1, heads, width));
        for (std::size_t a = 0; a < active.size(); ++a) {
            request& r = reqs[std::size_t(owner[active[a]])];
            std::memcpy(&r.out[std::size_t(r.next) * token], &out[a * token], token * sizeof(float));
            if (++r.next == r.total) owner[active[a]] = -1, ++finished; // retire: the slot is free
        }
        ++steps;
        tokens += n_active;
    }
    std::printf("served %ld requests in %ld slots: %ld batched steps, %ld generated tokens\n", long(count), long(slots), long(steps),
                long(tokens));

    // Replay every request alone with the inputs it was served with.
    index mismatches = 0;
    for (const request& r : reqs) {
        auto solo = attn.decoder(1, heads);
        std::vector<float> out_solo(r.out.size());
        solo.prefill(rows(r.q, 0, r.prompt), rows(r.k, 0, r.prompt), rows(r.v, 0, r.prompt), rows(out_solo, 0, r.prompt));
        for (index t = r.prompt; t < r.total; ++t)
            solo.step(rows(r.q, t, 1), rows(r.k, t, 1), rows(r.v, t, 1), rows(out_solo, t, 1));
        if (std::memcmp(out_solo.data(), r.out.data(), r.out.size() * sizeof(float)) != 0) ++mismatches;
    }
    std::printf("replayed alone: %ld of %ld requests differ from their served outputs\n", long(mismatches), long(count));
    return mismatches == 0 ? 0 : 1;
}
} // namespace

int main(int argc, char** argv) { return run(argc, argv); }
