// Test helpers shared by the kernel and autograd suites: seeded random data,
// relative error by norm, and central finite differences.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace nq::testing {

// n normal(0, stddev) values from a fixed seed.
template <typename T = double>
std::vector<T> randn(int64_t n, uint32_t seed, double stddev = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(0.0, stddev);
  std::vector<T> v(static_cast<size_t>(n));
  for (T& x : v) x = T(dist(gen));
  return v;
}

// ||a - b|| / ||b||: the error of `a` relative to the reference `b`.
template <typename A, typename B>
double rel_err(const std::vector<A>& a, const std::vector<B>& b) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
    ref += double(b[i]) * double(b[i]);
  }
  return std::sqrt(diff) / std::max(std::sqrt(ref), 1e-300);
}

template <typename A, typename B>
double dot(const std::vector<A>& a, const std::vector<B>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * double(b[i]);
  return s;
}

// d(loss)/dx by central differences, (loss(x + h e_i) - loss(x - h e_i)) / 2h,
// perturbing x in place (loss() reads x) and restoring it.
template <typename T>
std::vector<double> numeric_grad(std::vector<T>& x, const std::function<double()>& loss, double h) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    T saved = x[i];
    x[i] = T(double(saved) + h);
    double up = loss();
    x[i] = T(double(saved) - h);
    double down = loss();
    x[i] = saved;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

}  // namespace nq::testing
