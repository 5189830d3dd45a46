/* The comparison's sums over one pair of float32 buffers (a device's tensor d and the
 * reference r), in one pass: what metrics.py's float64 numpy chunks compute in about twenty
 * passes, a log numpy does not vectorise among them (compare_kernel.py).
 *
 * Each element is widened to double first, as in metrics.py, so d - r is exact. The loop is
 * an OpenMP simd loop (-fopenmp-simd: no OpenMP runtime): the compiler keeps vector lanes of
 * every sum and adds them at the end, and calls glibc's vector log (libmvec). Nothing in it
 * branches, so NaN, infinity and division by zero cannot arise: the caller passes only
 * positions finite in both tensors, and the KL weights are floored above zero.
 *
 * out, in metrics._Sums's order: sum d*d, r*r, d*r, e*e (e = d - r), sum |e|, max |e|,
 * sum and max of |e|/|r| over r != 0, the count of r != 0, the counts of those with
 * |e|/|r| below params[4] and below params[5] (0.001 and 0.005), and KL's sum p, sum q and
 * sum p*log(p/q), where p = max((d - params[0]) * params[1], floor) and q likewise with
 * params[2] and params[3]: floor is FLT_EPSILON, or 1 for a constant tensor (scale 0), whose
 * weights are then all equal (metrics._kl_weights).
 */
#include <float.h>
#include <stdint.h>

/* glibc's math.h declares the vector variants only under -ffast-math, which we do not
 * use: it would also set flush-to-zero for the whole process when the library loads. */
double log(double) __attribute__((__simd__("notinbranch")));

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
/* AVX2 where the CPU has it, chosen at load time (4 doubles a vector, and libmvec's AVX2 log). */
__attribute__((target_clones("avx2", "default")))
#endif
void compare_float32(const float *d, const float *r, int64_t count, const double *params, double *out) {
    const double d_offset = params[0], d_scale = params[1], r_offset = params[2], r_scale = params[3];
    const double tight = params[4], loose = params[5];
    const double d_floor = d_scale == 0.0 ? 1.0 : FLT_EPSILON, r_floor = r_scale == 0.0 ? 1.0 : FLT_EPSILON;
    double dd = 0, rr = 0, dr = 0, ee = 0, abs_sum = 0, abs_max = 0, rel_sum = 0, rel_max = 0;
    double rel_n = 0, within_1 = 0, within_5 = 0, kl_p = 0, kl_q = 0, kl_plogpq = 0;
#pragma omp simd reduction(+ : dd, rr, dr, ee, abs_sum, rel_sum, rel_n, within_1, within_5, kl_p, kl_q, kl_plogpq) \
    reduction(max : abs_max, rel_max)
    for (int64_t i = 0; i < count; ++i) {
        const double x = d[i], y = r[i];
        const double e = x - y;
        dd += x * x;
        rr += y * y;
        dr += x * y;
        ee += e * e;
        const double abs_e = e < 0 ? -e : e, abs_y = y < 0 ? -y : y;
        abs_sum += abs_e;
        abs_max = abs_e > abs_max ? abs_e : abs_max;
        /* A zero reference has no relative error: it reads 0 and is left out of the counts. */
        const int kept = abs_y != 0.0;
        const double relative = (kept ? abs_e : 0.0) / (kept ? abs_y : 1.0);
        rel_sum += relative;
        rel_max = relative > rel_max ? relative : rel_max;
        rel_n += kept;
        within_1 += kept & (relative < tight);
        within_5 += kept & (relative < loose);
        double p = (x - d_offset) * d_scale, q = (y - r_offset) * r_scale;
        p = p > d_floor ? p : d_floor;
        q = q > r_floor ? q : r_floor;
        kl_p += p;
        kl_q += q;
        kl_plogpq += p * log(p / q);
    }
    const double sums[14] = {dd, rr, dr, ee, abs_sum, abs_max, rel_sum, rel_max, rel_n, within_1, within_5, kl_p, kl_q, kl_plogpq};
    for (int k = 0; k < 14; ++k)
        out[k] = sums[k];
}
