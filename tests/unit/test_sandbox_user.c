/* The sandbox's user, environment and PATH resolution, against passwd and
 * group files this test writes (never the host's). */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/check.h"
#include "sandbox/internal.h"

static char dir[] = "/tmp/kindling-test-user.XXXXXX";
static char pw[PATH_MAX], gr[PATH_MAX];

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f) {
		perror(path);
		exit(1);
	}
	fputs(text, f);
	fclose(f);
}

static void test_users(void)
{
	struct sandbox_user u;
	write_text(pw, "root:x:0:0:root:/root:/bin/sh\n"
		       "# a comment:x:1:1::/:\n"
		       "broken line without colons\n"
		       "badid:x:12a:5::/home/badid:/bin/sh\n"
		       "app:x:1234:2345:the app:/home/app:/bin/sh\n"
		       "big:x:4294967294:7::/big:/bin/sh\n"
		       "toobig:x:4294967295:7::/x:/bin/sh\n"
		       "nohome:x:77:77:::/bin/sh"); /* no trailing newline */
	write_text(gr, "root:x:0:\n"
		       "appgrp:x:2345:\n"
		       "extra:x:3456:someone,app\n"
		       "extra2:x:3457:application,appx\n" /* prefixes of "app" must not match */
		       "same:x:2345:app\n"		   /* the primary gid is not repeated */
		       "bad:x:x1:app\n"
		       "named:x:999:\n");

	/* Default: root. */
	CHECK(sandbox_user_resolve(NULL, pw, gr, &u) == 0 && u.uid == 0 && u.gid == 0 && strcmp(u.home, "/root") == 0);
	CHECK(sandbox_user_resolve("", pw, gr, &u) == 0 && u.uid == 0);

	/* By name: uid, gid, home and supplementary groups from the image. */
	CHECK(sandbox_user_resolve("app", pw, gr, &u) == 0);
	CHECK(u.uid == 1234 && u.gid == 2345 && strcmp(u.home, "/home/app") == 0);
	CHECK(u.n_groups == 1 && u.groups[0] == 3456);

	/* Numeric uid with an entry takes its gid; without one, gid 0 and no home. */
	CHECK(sandbox_user_resolve("1234", pw, gr, &u) == 0 && u.uid == 1234 && u.gid == 2345 && u.n_groups == 1);
	CHECK(sandbox_user_resolve("5000", pw, gr, &u) == 0 && u.uid == 5000 && u.gid == 0 && u.home[0] == '\0' &&
	      u.n_groups == 0);

	/* user:group in all four spellings; no supplementary groups then. */
	CHECK(sandbox_user_resolve("app:named", pw, gr, &u) == 0 && u.uid == 1234 && u.gid == 999 && u.n_groups == 0);
	CHECK(sandbox_user_resolve("app:42", pw, gr, &u) == 0 && u.uid == 1234 && u.gid == 42);
	CHECK(sandbox_user_resolve("4321:appgrp", pw, gr, &u) == 0 && u.uid == 4321 && u.gid == 2345);
	CHECK(sandbox_user_resolve("4321:4322", pw, gr, &u) == 0 && u.uid == 4321 && u.gid == 4322);

	/* Edges of the id range and malformed entries. */
	CHECK(sandbox_user_resolve("big", pw, gr, &u) == 0 && u.uid == 4294967294u);
	CHECK(sandbox_user_resolve("toobig", pw, gr, &u) == -ENOENT); /* its line is invalid, so no such user */
	CHECK(sandbox_user_resolve("badid", pw, gr, &u) == -ENOENT);
	CHECK(sandbox_user_resolve("4294967295", pw, gr, &u) == -EINVAL);
	CHECK(sandbox_user_resolve("99999999999", pw, gr, &u) == -EINVAL);
	CHECK(sandbox_user_resolve("nohome", pw, gr, &u) == 0 && u.uid == 77 && u.home[0] == '\0');

	/* Names that are not there, and malformed values. */
	CHECK(sandbox_user_resolve("nosuch", pw, gr, &u) == -ENOENT);
	CHECK(sandbox_user_resolve("app:nosuchgroup", pw, gr, &u) == -ENOENT);
	CHECK(sandbox_user_resolve("a comment", pw, gr, &u) == -ENOENT);
	CHECK(sandbox_user_resolve(":5", pw, gr, &u) == -EINVAL);
	CHECK(sandbox_user_resolve("app:", pw, gr, &u) == -EINVAL);
	CHECK(sandbox_user_resolve("a:b:c", pw, gr, &u) == -EINVAL);
	CHECK(sandbox_user_resolve("-1", pw, gr, &u) == -ENOENT); /* not numeric, so a name, and not present */

	/* Missing files: numeric ids still work, names do not. */
	char nope[PATH_MAX + 16];
	snprintf(nope, sizeof(nope), "%s/none", dir);
	CHECK(sandbox_user_resolve("1000:1000", nope, nope, &u) == 0 && u.uid == 1000 && u.gid == 1000);
	CHECK(sandbox_user_resolve("root", nope, nope, &u) == -ENOENT);
	CHECK(sandbox_user_resolve("0", NULL, NULL, &u) == 0 && u.uid == 0 && u.gid == 0);

	/* A file with NULs and huge lines is just data. */
	FILE *f = fopen(pw, "w");
	for (int i = 0; i < 10000; i++)
		fputc('x', f);
	fputs(":x:1:1::/:\n\0app:x:5:5::/:\n", f);
	fwrite("evil\0:x:6:6::/:\n", 1, 16, f);
	fclose(f);
	CHECK(sandbox_user_resolve("evil", pw, gr, &u) == -ENOENT);

	/* Many groups are capped, not overflowed. */
	write_text(pw, "m:x:10:10::/:\n");
	f = fopen(gr, "w");
	for (int i = 0; i < SANDBOX_MAX_GROUPS + 20; i++)
		fprintf(f, "g%d:x:%d:m\n", i, 100 + i);
	fclose(f);
	CHECK(sandbox_user_resolve("m", pw, gr, &u) == 0 && u.n_groups == SANDBOX_MAX_GROUPS);
}

static void test_env(void)
{
	char *base[] = {"PATH=/img/bin", "A=1", "B=2", "noequals", "=bad", NULL};
	char *over[] = {"B=3", "C=4", "A=", NULL};
	struct str_list l = {0};
	CHECK(sandbox_env_build(base, over, "kindling", "/home/app", &l) == 0);
	CHECK(str_list_add(&l, "") == 0);
	free(l.items[--l.n]);
	l.items[l.n] = NULL;
	CHECK(strcmp(sandbox_env_get(l.items, "PATH"), "/img/bin") == 0);
	CHECK(strcmp(sandbox_env_get(l.items, "A"), "") == 0);
	CHECK(strcmp(sandbox_env_get(l.items, "B"), "3") == 0);
	CHECK(strcmp(sandbox_env_get(l.items, "C"), "4") == 0);
	CHECK(strcmp(sandbox_env_get(l.items, "HOME"), "/home/app") == 0);
	CHECK(strcmp(sandbox_env_get(l.items, "HOSTNAME"), "kindling") == 0);
	CHECK(sandbox_env_get(l.items, "noequals") == NULL);
	CHECK(l.n == 6); /* PATH A B C HOSTNAME HOME */
	str_list_clear(&l);

	/* No image env: Docker's default PATH, HOME=/ without a passwd home; an
	 * image HOME wins over the passwd one. */
	CHECK(sandbox_env_build(NULL, NULL, "h", "", &l) == 0);
	CHECK(str_list_add(&l, "") == 0);
	free(l.items[--l.n]);
	l.items[l.n] = NULL;
	CHECK(strcmp(sandbox_env_get(l.items, "PATH"), SANDBOX_DEFAULT_PATH) == 0);
	CHECK(strcmp(sandbox_env_get(l.items, "HOME"), "/") == 0);
	str_list_clear(&l);
	char *withhome[] = {"HOME=/custom", NULL};
	CHECK(sandbox_env_build(withhome, NULL, "h", "/home/app", &l) == 0);
	CHECK(str_list_add(&l, "") == 0);
	free(l.items[--l.n]);
	l.items[l.n] = NULL;
	CHECK(strcmp(sandbox_env_get(l.items, "HOME"), "/custom") == 0);
	str_list_clear(&l);
}

static void test_path(void)
{
	char a[256], b[256], p[512], out[PATH_MAX];
	snprintf(a, sizeof(a), "%s/a", dir);
	snprintf(b, sizeof(b), "%s/b", dir);
	mkdir(a, 0755);
	mkdir(b, 0755);
	snprintf(p, sizeof(p), "%s/tool", a);
	write_text(p, "not executable");
	chmod(p, 0644);
	snprintf(p, sizeof(p), "%s/tool", b);
	write_text(p, "#!/bin/sh\n");
	chmod(p, 0755);
	snprintf(p, sizeof(p), "%s/only", a);
	write_text(p, "x");
	chmod(p, 0644);
	snprintf(p, sizeof(p), "%s/sub", b);
	mkdir(p, 0755); /* a directory is not a command */

	char path_env[600];
	snprintf(path_env, sizeof(path_env), "%s:%s", a, b);
	CHECK(sandbox_path_lookup("tool", path_env, out, sizeof(out)) == 0);
	snprintf(p, sizeof(p), "%s/tool", b);
	CHECK(strcmp(out, p) == 0);
	/* Root may execute a 0644 file per access(2)?  No: X_OK needs an x bit
	 * for root too, so "only" is EACCES whoever runs the test. */
	CHECK(sandbox_path_lookup("only", path_env, out, sizeof(out)) == -EACCES);
	CHECK(sandbox_path_lookup("sub", path_env, out, sizeof(out)) == -ENOENT);
	CHECK(sandbox_path_lookup("missing", path_env, out, sizeof(out)) == -ENOENT);
	CHECK(sandbox_path_lookup("", path_env, out, sizeof(out)) == -ENOENT);
	CHECK(sandbox_path_lookup("/abs/x", path_env, out, sizeof(out)) == 0 && strcmp(out, "/abs/x") == 0);
	CHECK(sandbox_path_lookup("rel/x", path_env, out, sizeof(out)) == 0 && strcmp(out, "rel/x") == 0);
	CHECK(sandbox_path_lookup("tool", path_env, out, 8) == -ENAMETOOLONG);
	/* An empty PATH element means the current directory. */
	CHECK(chdir(b) == 0);
	CHECK(sandbox_path_lookup("tool", ":/nonexistent", out, sizeof(out)) == 0 && strcmp(out, "./tool") == 0);
	CHECK(chdir("/") == 0);
}

int main(void)
{
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(pw, sizeof(pw), "%s/passwd", dir);
	snprintf(gr, sizeof(gr), "%s/group", dir);
	log_set_level(LOG_SILENT);
	test_users();
	test_env();
	test_path();
	char cmd[PATH_MAX + 16];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	return check_report();
}
