// Vectorisable float exp / log1p for the CPU kernels, and the CPU instruction-set dispatch.
//
// The extension is built for baseline x86-64, where std::exp / std::log1p are scalar libm calls
// that no loop vectorises. VectorMath's functions are branch-free float arithmetic (selects, bit
// moves, polynomials): a `#pragma omp simd` loop over them vectorises at whatever width the
// enclosing function is compiled for, and the kernels compile their hot loops once per
// instruction set (PE_TARGET_AVX2 / PE_TARGET_AVX512 wrappers, picked at run time by
// cpu_isa()). CPU-only: never include from a .cu file.
//
// Accuracy, measured against float64 over the ranges the kernels use (csrc/cpu_math.h's test:
// tests/ops/test_ray_march.py::test_softplus_and_exp_match_float64_across_the_range):
//   exp: Cephes' expf reduction and degree-6 polynomial, <= 2 ulp, exact 1 at 0, denormals
//        kept, 0 below -104, +inf above 88.72, NaN propagated.
//   log1p: log of 1 + z (frexp-style split, Cephes' logf polynomial) plus the rounding
//        correction (z - ((1 + z) - 1)) / (1 + z), <= 2 ulp for z >= 0 (the only range used:
//        z = exp(x)); NaN propagated.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace portrait_engine {
namespace cpu_math {

// The bits of a float and back (std::bit_cast is C++20; memcpy keeps it valid C++17 and GCC
// vectorises it as a plain register move).
inline int32_t float_bits(float x) {
  int32_t i;
  std::memcpy(&i, &x, sizeof(i));
  return i;
}

inline float bits_float(int32_t i) {
  float x;
  std::memcpy(&x, &i, sizeof(x));
  return x;
}

// exp(x) for float. x = n ln2 + r, |r| <= ln2 / 2, n = round(x / ln2) by the 1.5 * 2^23 trick
// (NaN stays NaN through r); exp(r) by Cephes' polynomial; 2^n as two halves so that results
// down to the denormals and up to the overflow to +inf come out right without a branch.
inline float exp_float(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2High = 0.693359375f;  // ln 2 in two parts (Cephes)
  constexpr float kLn2Low = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  // |x| <= 104 (one select: two clamps in a row become branches that stop vectorisation):
  // below -104 the result is 0 (2^-150 rounds to 0), above 88.72 it is +inf (2^150 p).
  x = std::fabs(x) > 104.0f ? std::copysign(104.0f, x) : x;
  const float shifted = x * kLog2e + kRound;
  const float n = shifted - kRound;
  const int32_t k = float_bits(shifted) - float_bits(kRound);  // n as an integer
  float r = x - n * kLn2High;
  r = r - n * kLn2Low;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  // 2^k = 2^(k/2) 2^(k - k/2), each half within the normal exponents for k in [-150, 128]
  const int32_t half = k >> 1;
  const float scale_a = bits_float((half + 127) << 23);
  const float scale_b = bits_float((k - half + 127) << 23);
  return (p * scale_a) * scale_b;
}

// log1p(z) for float z >= 0 (NaN propagates; negative z is not supported). u = 1 + z = m 2^e,
// m in [sqrt(1/2), sqrt(2)); log(u) = e ln2 + log(m) with Cephes' logf polynomial in m - 1;
// the rounding of 1 + z is given back by (z - (u - 1)) / u, so log1p(z) = z for tiny z.
inline float log1p_float(float z) {
  constexpr float kLn2High = 0.693359375f;
  constexpr float kLn2Low = -2.12194440e-4f;
  const float u = 1.0f + z;
  const float correction = (z - (u - 1.0f)) / u;
  // u >= 1 is normal: its exponent and mantissa from the bits. Mantissas >= sqrt(1/2) (bits
  // 0x3f3504f3) are taken in [sqrt(1/2), 1) by adding 1 to the exponent.
  const int32_t bits = float_bits(u) - 0x3f3504f3;
  const int32_t e = bits >> 23;
  const float m = bits_float((bits & 0x007fffff) + 0x3f3504f3);
  const float f = m - 1.0f;
  const float ef = static_cast<float>(e);
  const float f2 = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = p * f * f2;
  y = y + ef * kLn2Low;
  y = y - 0.5f * f2;
  return (f + y) + ef * kLn2High + correction;
}

// The transcendentals and select of the kernels' per-element math, as a policy (rays::LibMath:
// std:: functions, for double and for CUDA; VectorMath: the float functions above).
// condition ? if_true : if_false as a bitwise blend of both values: with a `?:`, GCC moves a
// side computed only for the select under a branch, and a loop with a branch does not vectorise
// unless the instruction set has masks.
inline float select_float(bool condition, float if_true, float if_false) {
  const int32_t mask = -static_cast<int32_t>(condition);
  return bits_float((float_bits(if_true) & mask) | (float_bits(if_false) & ~mask));
}

struct VectorMath {
  static constexpr bool kBranchFree = true;
  static float exp(float x) { return exp_float(x); }
  static float log1p(float x) { return log1p_float(x); }
  static float select(bool condition, float if_true, float if_false) {
    return select_float(condition, if_true, if_false);
  }
};

// ------------------------------------------------------------------------------------------
// Instruction-set dispatch
// ------------------------------------------------------------------------------------------

enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// Functions compiled for AVX2 + FMA, and for AVX-512 (F, VL, DQ, BW: what x86-64-v4 has) with
// 512-bit vectors preferred. Used on wrappers that inline a kernel template (`flatten`), so
// the same source compiles once per instruction set.
// PE_NO_ISA_CLONES (setup.py: PORTRAIT_ENGINE_ISA_CLONES=0) leaves them out: the baseline build
// compiles in about a third of the time, for builds whose CPU kernels are not timed (a GPU
// machine's lease, where the longest C++ file held back the whole build).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__) && !defined(PE_NO_ISA_CLONES)
#define PE_HAVE_ISA_CLONES 1
#define PE_TARGET_AVX2 __attribute__((target("avx2,fma"), flatten))
#define PE_TARGET_AVX512                                                                        \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512"), \
                 flatten))
#else
#define PE_HAVE_ISA_CLONES 0
#endif

// PE_ISA_CLONES(FN, ARGS) defines FN_avx2 and FN_avx512: the range function
// `template <typename scalar_t> void FN(const ARGS<scalar_t>&, int64_t begin, int64_t end)`
// compiled again for each instruction set (whole, through `flatten`), for cpu_isa() to pick.
//
// PE_ISA_CLONES_WIDTH(FN, ARGS): the same for a range function that also takes its vector
// width in bytes, `template <typename scalar_t, int kVecBytes> void FN(...)`: a function that
// holds explicit vector types (GCC vector extensions) sizes them to the target's registers, since
// a vector wider than the registers lives in memory. The baseline build calls
// FN<scalar_t, kVecBytesBaseline>.
#if PE_HAVE_ISA_CLONES
// WIDTH(bytes) gives FN's template arguments after scalar_t: nothing, or ", bytes"
#define PE_ISA_NO_WIDTH(bytes)
#define PE_ISA_WIDTH(bytes) , bytes
#define PE_ISA_CLONES_WITH(FN, ARGS, WIDTH)                                                \
  template <typename scalar_t>                                                             \
  PE_TARGET_AVX2 void FN##_avx2(const ARGS<scalar_t>& a, int64_t begin, int64_t end) {     \
    FN<scalar_t WIDTH(::portrait_engine::cpu_math::kVecBytesAvx2)>(a, begin, end);         \
  }                                                                                        \
  template <typename scalar_t>                                                             \
  PE_TARGET_AVX512 void FN##_avx512(const ARGS<scalar_t>& a, int64_t begin, int64_t end) { \
    FN<scalar_t WIDTH(::portrait_engine::cpu_math::kVecBytesAvx512)>(a, begin, end);       \
  }
#define PE_ISA_CLONES(FN, ARGS) PE_ISA_CLONES_WITH(FN, ARGS, PE_ISA_NO_WIDTH)
#define PE_ISA_CLONES_WIDTH(FN, ARGS) PE_ISA_CLONES_WITH(FN, ARGS, PE_ISA_WIDTH)
#endif

// PE_ISA_PICK(FN, T): the clone of FN for scalar type T that cpu_isa() picks, as a function
// pointer: FN##_avx512<T>, FN##_avx2<T> or the baseline build's FN<T>. PE_ISA_PICK_WIDTH(FN, T)
// the same for a range function of PE_ISA_CLONES_WIDTH (baseline: FN<T, kVecBytesBaseline>).
// Without the clones (PE_NO_ISA_CLONES, or not x86-64 GCC / clang) both give the baseline one.
#if PE_HAVE_ISA_CLONES
#define PE_ISA_PICK_WITH(FN, T, BASELINE)                                               \
  ::portrait_engine::cpu_math::pick_isa(BASELINE, FN##_avx2<T>, FN##_avx512<T>)
#else
#define PE_ISA_PICK_WITH(FN, T, BASELINE) (BASELINE)
#endif
#define PE_ISA_PICK(FN, T) PE_ISA_PICK_WITH(FN, T, FN<T>)
#define PE_ISA_PICK_WIDTH(FN, T) \
  PE_ISA_PICK_WITH(FN, T, (FN<T, ::portrait_engine::cpu_math::kVecBytesBaseline>))

// The register width, in bytes, of each instruction set's vectors (SSE2, AVX2, AVX-512).
constexpr int kVecBytesBaseline = 16;
constexpr int kVecBytesAvx2 = 32;
constexpr int kVecBytesAvx512 = 64;

// A GCC vector of T of kBytes bytes (through a template, so that a dependent kBytes is applied
// where a class template instantiates it), and its number of lanes.
template <typename T, int kBytes>
struct VecOf {
  typedef T type __attribute__((vector_size(kBytes)));
  static constexpr int kLanes = kBytes / static_cast<int>(sizeof(T));
};

// The sum of a vector's lanes, its upper half added to its lower half until two lanes remain:
// log2(lanes) extract-and-add steps, where a loop over the lanes (or an omp simd reduction,
// which GCC sums lane by lane through memory) is a chain of one add per lane, since without
// -ffast-math the compiler keeps its order. The result is that of this pairwise order.
template <typename T, int kBytes>
inline T lane_sum(const typename VecOf<T, kBytes>::type& v) {
  if constexpr (VecOf<T, kBytes>::kLanes == 1) {
    return v[0];
  } else if constexpr (VecOf<T, kBytes>::kLanes == 2) {
    return v[0] + v[1];
  } else {
    using Half = typename VecOf<T, kBytes / 2>::type;
    Half lo, hi;
    std::memcpy(&lo, &v, sizeof(Half));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
    return lane_sum<T, kBytes / 2>(lo + hi);
  }
}

// The widest instruction set this CPU (and OS) supports, capped by the environment variable
// PORTRAIT_ENGINE_CPU_ISA = baseline | avx2 | avx512 (read on every call, so tests can run
// each path; the cost is one getenv per kernel launch).
inline Isa cpu_isa() {
#if PE_HAVE_ISA_CLONES
  static const Isa supported = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("fma")) {
      return Isa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kBaseline;
  }();
  Isa cap = Isa::kAvx512;
  if (const char* value = std::getenv("PORTRAIT_ENGINE_CPU_ISA")) {
    const std::string_view name(value);
    if (name == "baseline") cap = Isa::kBaseline;
    if (name == "avx2") cap = Isa::kAvx2;
  }
  return static_cast<int>(cap) < static_cast<int>(supported) ? cap : supported;
#else
  return Isa::kBaseline;
#endif
}

// The one of three clones of a function that cpu_isa() picks (PE_ISA_PICK's helper).
template <typename Fn>
inline Fn pick_isa(Fn baseline, Fn avx2, Fn avx512) {
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return avx512;
    case Isa::kAvx2:
      return avx2;
    case Isa::kBaseline:
      break;
  }
  return baseline;
}

}  // namespace cpu_math
}  // namespace portrait_engine
