/*
 * main.c - runs the unit tests registered with TEST().
 *
 *     unit [SUBSTRING]
 *
 * One line per test, "ok   name" or "FAIL name: file:line: expr" (further
 * failures of the same test follow, indented), then "N passed, N failed".
 * Exit status 1 if any test failed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "unit.h"

static struct unit_test *unit_head;
static struct unit_test **unit_tail = &unit_head;

/* State of the running test. */
static struct {
    const char *name;
    void (*fn)(void);
    int failures;
    jmp_buf abort;
} unit_cur;

void unit_register(struct unit_test *t)
{
    t->next = NULL;
    *unit_tail = t;
    unit_tail = &t->next;
}

int unit_fail(const char *file, int line, int fatal, const char *fmt, ...)
{
    va_list ap;

    if (unit_cur.failures++ == 0)
        printf("FAIL %s: ", unit_cur.name);
    else
        printf("     ");
    printf("%s:%d: ", file, line);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (fatal)
        longjmp(unit_cur.abort, 1);
    return 0;
}

int unit_check_int(const char *file, int line, int fatal, const char *expr,
                   intmax_t a, intmax_t b)
{
    if (a == b)
        return 1;
    return unit_fail(file, line, fatal, "%s (%jd vs %jd)", expr, a, b);
}

int unit_check_str(const char *file, int line, int fatal, const char *expr,
                   const char *a, const char *b)
{
    if (a != NULL && b != NULL && strcmp(a, b) == 0)
        return 1;
    if (a == NULL && b == NULL)
        return 1;
    return unit_fail(file, line, fatal, "%s (\"%s\" vs \"%s\")", expr,
                     a ? a : "(null)", b ? b : "(null)");
}

int unit_check_mem(const char *file, int line, int fatal, const char *expr,
                   const void *a, size_t alen, const void *b, size_t blen)
{
    const unsigned char *x = a, *y = b;
    size_t n = alen < blen ? alen : blen;
    size_t i = 0;

    while (i < n && x[i] == y[i])
        i++;
    if (i == n && alen == blen)
        return 1;
    if (i < n)
        return unit_fail(file, line, fatal,
                         "%s (byte %zu differs: 0x%02x vs 0x%02x)", expr, i,
                         x[i], y[i]);
    return unit_fail(file, line, fatal, "%s (length %zu vs %zu)", expr, alen,
                     blen);
}

int unit_check_contains(const char *file, int line, int fatal,
                        const char *expr, const char *hay, const char *needle)
{
    if (hay != NULL && needle != NULL && strstr(hay, needle) != NULL)
        return 1;
    return unit_fail(file, line, fatal, "%s (\"%s\")", expr,
                     hay ? hay : "(null)");
}

/* Runs one test; 1 if it passed. Nothing local lives across the setjmp, so
 * a REQUIRE's longjmp cannot clobber it. */
static int run_one(const struct unit_test *t)
{
    unit_cur.name = t->name;
    unit_cur.fn = t->fn;
    unit_cur.failures = 0;
    if (setjmp(unit_cur.abort) == 0)
        unit_cur.fn();
    return unit_cur.failures == 0;
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    int passed = 0, failed = 0;

    for (struct unit_test *t = unit_head; t != NULL; t = t->next) {
        if (filter != NULL && strstr(t->name, filter) == NULL)
            continue;
        if (run_one(t)) {
            printf("ok   %s\n", t->name);
            passed++;
        } else {
            failed++;
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed > 0;
}
