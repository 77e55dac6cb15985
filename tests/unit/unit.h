/*
 * unit.h - a tiny C unit test harness.
 *
 *     TEST(frame_split) {
 *         CHECK_EQ_INT(frame_put(&b, "x", 1), 0);
 *         REQUIRE(b.len == 5);      // stops this test if false
 *     }
 *
 * TEST registers the function before main() runs (a constructor), so a test
 * file needs no list to keep in sync. CHECK* record a failure and carry on;
 * REQUIRE* record it and end the current test at once (a longjmp, so they
 * work from helpers too; whatever the test held at that point is leaked).
 * tests/unit/main.c runs every test, or those whose name contains argv[1].
 */
#ifndef UNIT_H
#define UNIT_H

#include <stddef.h>
#include <stdint.h>

struct unit_test {
    const char *name;
    void (*fn)(void);
    struct unit_test *next;    /* registration order */
};

void unit_register(struct unit_test *t);

/* Records a failure of the running test; returns 0 so that macros can be
 * written as expressions. fatal ends the test. */
int unit_fail(const char *file, int line, int fatal, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Helpers behind the typed checks; they return 1 when the check holds. */
int unit_check_int(const char *file, int line, int fatal, const char *expr,
                   intmax_t a, intmax_t b);
int unit_check_str(const char *file, int line, int fatal, const char *expr,
                   const char *a, const char *b);
int unit_check_mem(const char *file, int line, int fatal, const char *expr,
                   const void *a, size_t alen, const void *b, size_t blen);
int unit_check_contains(const char *file, int line, int fatal,
                        const char *expr, const char *hay, const char *needle);

#define TEST(name)                                                           \
    static void unit_fn_##name(void);                                        \
    static struct unit_test unit_t_##name = {#name, unit_fn_##name, NULL};   \
    __attribute__((constructor)) static void unit_reg_##name(void)           \
    {                                                                        \
        unit_register(&unit_t_##name);                                       \
    }                                                                        \
    static void unit_fn_##name(void)

#define UNIT_CHECK_(fatal, cond)                                             \
    ((cond) ? 1 : unit_fail(__FILE__, __LINE__, fatal, "%s", #cond))
#define UNIT_EQ_INT_(fatal, a, b)                                            \
    unit_check_int(__FILE__, __LINE__, fatal, #a " == " #b, (intmax_t)(a),   \
                   (intmax_t)(b))
#define UNIT_STR_EQ_(fatal, a, b)                                            \
    unit_check_str(__FILE__, __LINE__, fatal, #a " == " #b, (a), (b))
#define UNIT_MEM_EQ_(fatal, a, alen, b, blen)                                \
    unit_check_mem(__FILE__, __LINE__, fatal, #a " == " #b, (a), (alen),     \
                   (b), (blen))
#define UNIT_CONTAINS_(fatal, hay, needle)                                   \
    unit_check_contains(__FILE__, __LINE__, fatal,                           \
                        #hay " contains " #needle, (hay), (needle))

/* Record and continue. Each evaluates to 1 if the check held. */
#define CHECK(cond) UNIT_CHECK_(0, cond)
#define CHECK_EQ_INT(a, b) UNIT_EQ_INT_(0, a, b)
#define CHECK_STR_EQ(a, b) UNIT_STR_EQ_(0, a, b)
#define CHECK_MEM_EQ(a, alen, b, blen) UNIT_MEM_EQ_(0, a, alen, b, blen)
#define CHECK_CONTAINS(hay, needle) UNIT_CONTAINS_(0, hay, needle)

/* Record and end the test. */
#define REQUIRE(cond) UNIT_CHECK_(1, cond)
#define REQUIRE_EQ_INT(a, b) UNIT_EQ_INT_(1, a, b)
#define REQUIRE_STR_EQ(a, b) UNIT_STR_EQ_(1, a, b)
#define REQUIRE_MEM_EQ(a, alen, b, blen) UNIT_MEM_EQ_(1, a, alen, b, blen)
#define REQUIRE_CONTAINS(hay, needle) UNIT_CONTAINS_(1, hay, needle)

/* Unconditional failure with a message. */
#define FAIL(...) unit_fail(__FILE__, __LINE__, 0, __VA_ARGS__)

#endif
