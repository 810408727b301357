/*
 * test_vcache.c - the IMAP verdict cache: keys never mix, LRU eviction,
 * database-version staleness, references on the substitute spool.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "proxy/spool.h"
#include "proxy/vcache.h"

static struct vcache_key key(const char *user, const char *mbox, uint32_t uv,
                             uint32_t uid)
{
	struct vcache_key k = {"127.0.0.1:143", user, mbox, uv, uid};

	return k;
}

static struct vcache_entry entry(enum scan_result r, const char *sig, unsigned db)
{
	struct vcache_entry e;

	memset(&e, 0, sizeof(e));
	e.result = r;
	snprintf(e.signature, sizeof(e.signature), "%s", sig);
	e.db_version = db;
	e.size = 1234;
	return e;
}

START_TEST(test_hit_and_distinct_keys)
{
	struct vcache *c = vcache_new(16);
	struct vcache_key k = key("taro", "INBOX", 7, 42);
	struct vcache_entry e = entry(SCAN_INFECTED, "Eicar", 1);
	const struct vcache_entry *g;

	ck_assert_ptr_null(vcache_get(c, &k, 1));
	ck_assert_int_eq(vcache_put(c, &k, &e), 0);
	g = vcache_get(c, &k, 1);
	ck_assert_ptr_nonnull(g);
	ck_assert_int_eq(g->result, SCAN_INFECTED);
	ck_assert_str_eq(g->signature, "Eicar");
	/* every part of the key matters */
	struct vcache_key other[] = {
	    key("jiro", "INBOX", 7, 42),  key("taro", "Sent", 7, 42),
	    key("taro", "INBOX", 8, 42),  key("taro", "INBOX", 7, 43),
	    key("taro", "INBOX ", 7, 42), key("tar", "oINBOX", 7, 42)};
	for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++)
		ck_assert_ptr_null(vcache_get(c, &other[i], 1));
	struct vcache_key up = k;
	up.upstream = "127.0.0.1:993";
	ck_assert_ptr_null(vcache_get(c, &up, 1));
	ck_assert_uint_eq(vcache_count(c), 1);
	vcache_free(&c);
	ck_assert_ptr_null(c);
}
END_TEST

START_TEST(test_lru_eviction)
{
	struct vcache *c = vcache_new(3);
	struct vcache_entry e = entry(SCAN_CLEAN, "", 1);

	for (uint32_t uid = 1; uid <= 3; uid++) {
		struct vcache_key k = key("u", "INBOX", 1, uid);
		ck_assert_int_eq(vcache_put(c, &k, &e), 0);
	}
	/* touch 1: 2 is now the least recently used */
	struct vcache_key k1 = key("u", "INBOX", 1, 1), k2 = key("u", "INBOX", 1, 2),
	                  k3 = key("u", "INBOX", 1, 3), k4 = key("u", "INBOX", 1, 4);
	ck_assert_ptr_nonnull(vcache_get(c, &k1, 1));
	ck_assert_int_eq(vcache_put(c, &k4, &e), 0);
	ck_assert_uint_eq(vcache_count(c), 3);
	ck_assert_ptr_null(vcache_get(c, &k2, 1));
	ck_assert_ptr_nonnull(vcache_get(c, &k1, 1));
	ck_assert_ptr_nonnull(vcache_get(c, &k3, 1));
	ck_assert_ptr_nonnull(vcache_get(c, &k4, 1));
	/* many more than the capacity: bounded */
	for (uint32_t uid = 100; uid < 10100; uid++) {
		struct vcache_key k = key("u", "INBOX", 1, uid);
		ck_assert_int_eq(vcache_put(c, &k, &e), 0);
	}
	ck_assert_uint_eq(vcache_count(c), 3);
	vcache_free(&c);
}
END_TEST

START_TEST(test_new_database_means_rescan)
{
	struct vcache *c = vcache_new(4);
	struct vcache_key k = key("u", "INBOX", 1, 1);
	struct vcache_entry e = entry(SCAN_CLEAN, "", 26000);

	ck_assert_int_eq(vcache_put(c, &k, &e), 0);
	ck_assert_ptr_nonnull(vcache_get(c, &k, 26000));
	ck_assert_ptr_null(vcache_get(c, &k, 26001));
	/* the stale entry is gone, not just hidden */
	ck_assert_uint_eq(vcache_count(c), 0);
	ck_assert_ptr_null(vcache_get(c, &k, 26000));
	vcache_free(&c);
}
END_TEST

/* Notices in all past the limit: the least recently used entries with one go. */
START_TEST(test_notice_bytes_bounded)
{
	struct vcache *c = vcache_new(100);
	struct vcache_entry clean = entry(SCAN_CLEAN, "", 1);
	char blk[1000];

	memset(blk, ' ', sizeof(blk));
	vcache_set_notice_limit(c, 5000);
	for (uint32_t uid = 1; uid <= 10; uid++) {
		struct vcache_key k = key("u", "INBOX", 1, uid);
		struct vcache_entry e = entry(SCAN_INFECTED, "x", 1);
		struct spool *n = spool_new(4096, NULL, 0);

		spool_append(n, blk, sizeof(blk));
		spool_freeze(n);
		e.notice = n;
		ck_assert_int_eq(vcache_put(c, &k, &e), 0);
		spool_unref(&n);
		ck_assert_uint_le(vcache_notice_bytes(c), 5000);
	}
	/* a clean entry (no notice) in between is never dropped for this */
	struct vcache_key kc = key("u", "INBOX", 1, 100);
	ck_assert_int_eq(vcache_put(c, &kc, &clean), 0);
	ck_assert_uint_eq(vcache_notice_bytes(c), 5000);
	ck_assert_uint_eq(vcache_count(c), 6);
	/* the five most recent notices stay, the older ones went */
	for (uint32_t uid = 1; uid <= 10; uid++) {
		struct vcache_key k = key("u", "INBOX", 1, uid);

		if (uid <= 5)
			ck_assert_ptr_null(vcache_get(c, &k, 1));
		else
			ck_assert_ptr_nonnull(vcache_get(c, &k, 1));
	}
	ck_assert_ptr_nonnull(vcache_get(c, &kc, 1));
	/* a lower limit applies at once */
	vcache_set_notice_limit(c, 0);
	ck_assert_uint_eq(vcache_notice_bytes(c), 0);
	ck_assert_uint_eq(vcache_count(c), 1);
	vcache_free(&c);
}
END_TEST

START_TEST(test_notice_references)
{
	struct vcache *c = vcache_new(1);
	struct spool *n1 = spool_new(1024, NULL, 0), *n2 = spool_new(1024, NULL, 0);
	struct vcache_key k = key("u", "INBOX", 1, 1), k2 = key("u", "INBOX", 1, 2);
	struct vcache_entry e = entry(SCAN_INFECTED, "x", 1);
	const struct vcache_entry *g;

	spool_append(n1, "notice one", 10);
	spool_freeze(n1);
	spool_append(n2, "notice two", 10);
	spool_freeze(n2);
	e.notice = n1;
	ck_assert_int_eq(vcache_put(c, &k, &e), 0);
	spool_unref(&n1); /* the cache holds it now */
	g = vcache_get(c, &k, 1);
	ck_assert_ptr_nonnull(g);
	ck_assert_uint_eq(spool_size(g->notice), 10);
	/* replacing drops the old reference, takes the new one */
	e.notice = n2;
	ck_assert_int_eq(vcache_put(c, &k, &e), 0);
	g = vcache_get(c, &k, 1);
	char buf[16] = "";
	ck_assert_int_eq(spool_pread(g->notice, buf, 10, 0), 10);
	ck_assert_int_eq(memcmp(buf, "notice two", 10), 0);
	/* eviction drops it too (ASan would report a leak or a double free) */
	e.notice = NULL;
	ck_assert_int_eq(vcache_put(c, &k2, &e), 0);
	spool_unref(&n2);
	vcache_free(&c);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("vcache");
	TCase *tc = tcase_create("vcache");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_hit_and_distinct_keys);
	tcase_add_test(tc, test_lru_eviction);
	tcase_add_test(tc, test_new_database_means_rescan);
	tcase_add_test(tc, test_notice_bytes_bounded);
	tcase_add_test(tc, test_notice_references);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
