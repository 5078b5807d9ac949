// Small dense kernels for the CPU: a branch-free exp (so that loops over it vectorize), and
// vector x matrix products specialised for the tower widths d in {8, 16, 32, 64}.
//
// Functions marked PIMM_TARGET_CLONES are compiled for AVX-512, AVX2+FMA and baseline x86-64; the
// loader picks the best one for the CPU at run time (GCC function multiversioning, no -march flag).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PIMM_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PIMM_TARGET_CLONES
#endif
#define PIMM_INLINE inline __attribute__((always_inline))

namespace pimm_fast::cpu {

// exp for float: Cody-Waite range reduction and the Cephes minimax polynomial (~1 ulp on
// [-87, 88]; inputs outside are clamped, NaN propagates). No branches, no library call.
PIMM_INLINE float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  float n = (x * 1.44269504088896341f + magic) - magic;
  n = n == n ? n : 0.0f;  // NaN: keep the int conversion below defined; the polynomial stays NaN
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

PIMM_INLINE double exp_approx(double x) { return std::exp(x); }  // fp64 is for gradcheck, not speed

template <typename T>
PIMM_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + exp_approx(-x));
}

// Compile-time width when D > 0, else the run-time d.
template <int D>
PIMM_INLINE int64_t width(int64_t d) {
  return D > 0 ? D : d;
}

// 32-byte vectors (8 floats, 4 doubles) in GCC's portable vector extension: one AVX register, two SSE
// registers. Explicit vector accumulators stay in registers; a plain array accumulator would be
// stored and reloaded on every iteration.
typedef float float8_t __attribute__((vector_size(32)));
typedef double double4_t __attribute__((vector_size(32)));
template <typename T>
struct VectorOf;  // (an attribute on a template parameter would be ignored, hence the trait)
template <>
struct VectorOf<float> {
  using type = float8_t;
};
template <>
struct VectorOf<double> {
  using type = double4_t;
};
template <typename T>
using vec_t = typename VectorOf<T>::type;

template <typename T>
constexpr int kLanes = 32 / sizeof(T);

template <typename T>
PIMM_INLINE vec_t<T> load(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
PIMM_INLINE void store(T* p, const vec_t<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
PIMM_INLINE T hsum(const vec_t<T>& v) {
  T lanes[kLanes<T>];
  std::memcpy(lanes, &v, sizeof(v));
  T s = 0;
  for (int l = 0; l < kLanes<T>; ++l) s += lanes[l];
  return s;
}

// y = x @ M for a row vector x [d] and a row-major M [d, d]. With few vectors per row, two
// accumulator sets (even and odd k) keep enough independent FMA chains in flight.
template <typename T, int D>
PIMM_INLINE void vecmat(const T* __restrict__ x, const T* __restrict__ M, T* __restrict__ y, int64_t d) {
  if constexpr (D > 0 && D % kLanes<T> == 0) {
    constexpr int V = D / kLanes<T>;
    constexpr int S = V < 8 ? 2 : 1;  // accumulator sets
    vec_t<T> acc[S][V] = {};
#pragma GCC unroll 8
    for (int k = 0; k < D; k += S) {
#pragma GCC unroll 2
      for (int s = 0; s < S; ++s) {
        const T xk = x[k + s];
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[s][v] += xk * load(M + (k + s) * D + v * kLanes<T>);
      }
    }
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) store(y + v * kLanes<T>, S == 2 ? acc[0][v] + acc[S - 1][v] : acc[0][v]);
  } else {
    const int64_t n = width<D>(d);
    for (int64_t j = 0; j < n; ++j) y[j] = T(0);
    for (int64_t k = 0; k < n; ++k) {
      const T xk = x[k];
      for (int64_t j = 0; j < n; ++j) y[j] += xk * M[k * n + j];
    }
  }
}

// (y0, y1) = (x0 @ M, x1 @ M): two row vectors against the same matrix, each row of M loaded once.
template <typename T, int D>
PIMM_INLINE void vecmat2(const T* __restrict__ x0, const T* __restrict__ x1, const T* __restrict__ M,
                         T* __restrict__ y0, T* __restrict__ y1, int64_t d) {
  if constexpr (D > 0 && D % kLanes<T> == 0 && D / kLanes<T> <= 4) {
    constexpr int V = D / kLanes<T>;
    vec_t<T> a0[V] = {}, a1[V] = {};
#pragma GCC unroll 8
    for (int k = 0; k < D; ++k) {
      const T b0 = x0[k], b1 = x1[k];
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) {
        const vec_t<T> row = load(M + k * D + v * kLanes<T>);
        a0[v] += b0 * row;
        a1[v] += b1 * row;
      }
    }
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      store(y0 + v * kLanes<T>, a0[v]);
      store(y1 + v * kLanes<T>, a1[v]);
    }
  } else {
    vecmat<T, D>(x0, M, y0, d);
    vecmat<T, D>(x1, M, y1, d);
  }
}

// G += sum_i a_i^T b_i over `rows` rows of a and b [rows, d] (G [d, d] row-major): a block's
// contribution to a weight gradient. R rows of G are held in registers across the samples, so that
// about 8 independent FMA chains run at once.
template <typename T, int D>
PIMM_INLINE void accumulate_tn(const T* __restrict__ a, const T* __restrict__ b, int64_t rows, T* __restrict__ G,
                               int64_t d) {
  if constexpr (D > 0 && D % kLanes<T> == 0) {
    constexpr int V = D / kLanes<T>;
    constexpr int R = V >= 8 ? 1 : 8 / V;
    static_assert(D % R == 0, "rows of G per pass must divide D");
    for (int j = 0; j < D; j += R) {
      vec_t<T> acc[R][V];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[r][v] = load(G + (j + r) * D + v * kLanes<T>);
      for (int64_t i = 0; i < rows; ++i) {
        vec_t<T> brow[V];
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) brow[v] = load(b + i * D + v * kLanes<T>);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const T air = a[i * D + j + r];
#pragma GCC unroll 16
          for (int v = 0; v < V; ++v) acc[r][v] += air * brow[v];
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) store(G + (j + r) * D + v * kLanes<T>, acc[r][v]);
    }
  } else {
    const int64_t n = width<D>(d);
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const T aij = a[i * n + j];
        for (int64_t k = 0; k < n; ++k) G[j * n + k] += aij * b[i * n + k];
      }
    }
  }
}

// Dot product in vector lanes (a floating-point sum is not reordered by the compiler on its own).
template <typename T>
PIMM_INLINE T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  vec_t<T> acc = {};
  const int64_t body = n - n % kLanes<T>;
  for (int64_t j = 0; j < body; j += kLanes<T>) acc += load(a + j) * load(b + j);
  T s = hsum<T>(acc);
  for (int64_t j = body; j < n; ++j) s += a[j] * b[j];
  return s;
}

}  // namespace pimm_fast::cpu
