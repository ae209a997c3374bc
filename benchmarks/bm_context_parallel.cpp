// Context parallelism over MPI: forward time of one sequence sharded over the ranks of mpirun, 1 thread per
// rank, B = 1, H = 8, D = M = E = 64, elu+1, float, N = 256k and 1M, causal and non-causal. Run it as
//   mpirun -np 1 build/release/benchmarks/bm_context_parallel   and   mpirun -np 2 ...
// (scripts/run bench does both); the 2-rank speedup is time(np 1) / time(np 2) of the same row. Counters:
// ranks, bytes_sent per rank per call (constant in N: the B·H states of M'·(E + 1) scalars). Iteration
// counts are fixed so that every rank runs the same collectives; only rank 0 reports.
#include <benchmark/benchmark.h>
#include <linrpe/distributed/context_parallel.hpp>
#include <linrpe/feature_maps/elu_plus_one.hpp>
#include <linrpe/linear_attention.hpp>

#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

namespace {
using namespace linrpe;
using attention = linear_attention<feature_maps::elu_plus_one, positional::none, float>;
constexpr linrpe::index heads = 8, width = 64;

void BM_context_parallel(benchmark::State& state)
{
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const linrpe::index n = state.range(0), mine = n / size + (rank < n % size ? 1 : 0);
    linrpe::index first = 0;
    for (int r = 0; r < rank; ++r) first += n / size + (r < n % size ? 1 : 0);
    options<float> opt;
    opt.mask = masking(state.range(1));
    opt.threads = 1;
    const attention attn({}, {}, opt);
    const distributed::context_parallel<attention> cp(attn, MPI_COMM_WORLD);
    std::vector<float> q(static_cast<std::size_t>(heads * mine * width)), k(q.size()), v(q.size()), out(q.size());
    std::srand(static_cast<unsigned>(rank + 1));
    for (auto* x : {&q, &k, &v})
        for (auto& e : *x) e = static_cast<float>(std::rand()) / static_cast<float>(RAND_MAX) - 0.5f;
    const auto view = [&](const std::vector<float>& x) { return view_bhnd(x.data(), 1, heads, mine, width); };
    for (auto _ : state) {
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        cp.forward(view(q), view(k), view(v), view_bhnd(out.data(), 1, heads, mine, width), first);
        MPI_Barrier(MPI_COMM_WORLD);
        state.SetIterationTime(MPI_Wtime() - t0);
        benchmark::DoNotOptimize(out.data());
    }
    state.counters["ranks"] = size;
    state.counters["bytes_sent"] = static_cast<double>(cp.bytes_sent());
    state.counters["tokens_per_s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}
} // namespace

BENCHMARK(BM_context_parallel)->Name("context_parallel")->ArgNames({"N", "causal"})
    ->ArgsProduct({{1 << 18, 1 << 20}, {0, 1}})->Iterations(3)->UseManualTime()->Unit(benchmark::kMillisecond);

// The other ranks take part in every collective, silently.
class quiet_reporter : public benchmark::BenchmarkReporter {
public:
    bool ReportContext(const Context&) override { return true; }
    void ReportRuns(const std::vector<Run>&) override {}
};

int main(int argc, char** argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    // Only rank 0 writes --benchmark_out: the others drop the flag, so they never open (and truncate) the file.
    std::vector<char*> args(argv, argv + argc);
    if (rank != 0)
        args.erase(std::remove_if(args.begin() + 1, args.end(),
                                  [](const char* a) { return std::string(a).rfind("--benchmark_out", 0) == 0; }),
                   args.end());
    int count = static_cast<int>(args.size());
    benchmark::Initialize(&count, args.data());
    if (rank == 0) benchmark::RunSpecifiedBenchmarks();
    else {
        quiet_reporter quiet;
        benchmark::RunSpecifiedBenchmarks(&quiet);
    }
    benchmark::Shutdown();
    MPI_Finalize();
    return 0;
}
