"""The Debian package: `cpack -G DEB` in the build directory of
$MAILMOAT_BIN, into a temporary directory, then dpkg-deb: the control
fields (Depends covers every library the binary links), the file list, the
conffile and the maintainer scripts; the package is extracted (never
installed) and the extracted binary checks the extracted configuration.
The maintainer scripts are syntax-checked and run with a PATH of logging
stubs only, so they cannot touch the host; the cases where systemd runs
use a private mount namespace (root and unshare, else skipped)."""
import os
import re
import shutil
import stat
import subprocess
import tempfile
import unittest

from itbase import mh

DEB_PATHS = [
    "./usr/bin/mailmoat",
    "./etc/mailmoat/mailmoat.yaml",
    "./usr/share/doc/mailmoat/mailmoat.example.yaml",
    "./usr/share/doc/mailmoat/README.md",
    "./usr/share/mailmoat/testsigs/mailmoat-test.ndb",
    "./usr/share/mailmoat/testsigs/mailmoat-test.hdb",
]
UNIT_PATHS = ["./usr/lib/systemd/system/mailmoat.service",
              "./lib/systemd/system/mailmoat.service"]
CONF = "/etc/mailmoat/mailmoat.yaml"
# Debian 12 names; t64 for the releases after it
LIB_PACKAGES = [r"libc6", r"libclamav\d+", r"libuv1(t64)?", r"libssl3(t64)?",
                r"libyaml-0-2", r"libgmime-3\.0-0(t64)?", r"libglib2\.0-0(t64)?"]


def run(cmd, timeout=60, **kw):
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout, **kw)
    return r.returncode, r.stdout.decode("utf-8", "replace")


def dep_names(field):
    """Package names of a Depends-like field, alternatives included."""
    names = set()
    for part in re.split(r"[,|]", field):
        part = part.strip()
        if part:
            names.add(re.split(r"[\s(:]", part, 1)[0])
    return names


class DebPackage(unittest.TestCase):

    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        for tool in ("cpack", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise unittest.SkipTest("%s is not installed (cmake / dpkg)" % tool)
        binary = os.path.abspath(mh.mailmoat_bin())
        if not os.path.exists(binary):
            raise unittest.SkipTest("mailmoat binary not built: %s" % binary)
        cls.build = os.path.dirname(binary)
        if not os.path.exists(os.path.join(cls.build, "CPackConfig.cmake")):
            raise unittest.SkipTest("%s is not a CMake build directory with CPack "
                                    "(no CPackConfig.cmake)" % cls.build)
        cls.tmp = tempfile.mkdtemp(prefix="mm-deb-")
        try:
            cls._make_package()
        except BaseException:
            shutil.rmtree(cls.tmp, True)
            raise

    @classmethod
    def _make_package(cls):
        out_dir = os.path.join(cls.tmp, "out")
        # cpack's install step rewrites the build tree's install manifests
        # (with the package's /usr paths); an admin may rely on them to
        # uninstall a `cmake --install`: they are put back as they were
        manifests = {}
        for f in ("install_manifest.txt", "install_manifest_deb-conffiles.txt"):
            p = os.path.join(cls.build, f)
            if os.path.exists(p):
                with open(p, "rb") as fh:
                    manifests[p] = fh.read()
            else:
                manifests[p] = None
        try:
            # cpack's preinstall step builds what is out of date: the timeout
            # leaves room for that, a fresh build packages in a few seconds
            rc, out = run(["cpack", "-G", "DEB", "-B", out_dir], timeout=300,
                          cwd=cls.build)
        finally:
            for p, data in manifests.items():
                if data is None:
                    if os.path.exists(p):
                        os.unlink(p)
                else:
                    with open(p, "wb") as fh:
                        fh.write(data)
        if rc != 0:
            raise AssertionError("cpack failed (%d):\n%s" % (rc, out))
        debs = [f for f in os.listdir(out_dir) if f.endswith(".deb")]
        if len(debs) != 1:
            raise AssertionError("expected one .deb in %s, got %r\n%s" % (out_dir, debs, out))
        cls.deb = os.path.join(out_dir, debs[0])
        rc, cls.info = run(["dpkg-deb", "--info", cls.deb])
        assert rc == 0, cls.info
        rc, contents = run(["dpkg-deb", "--contents", cls.deb])
        assert rc == 0, contents
        # "-rwxr-xr-x root/root  205768 2026-11-29 09:11 ./usr/bin/mailmoat"
        cls.contents = {}
        for line in contents.splitlines():
            f = line.split(None, 5)
            if len(f) == 6:
                cls.contents[f[5].split(" -> ")[0]] = (f[0], f[1])
        cls.root = os.path.join(cls.tmp, "root")
        rc, out = run(["dpkg-deb", "-x", cls.deb, cls.root])
        assert rc == 0, out
        cls.control = os.path.join(cls.tmp, "control")
        rc, out = run(["dpkg-deb", "-e", cls.deb, cls.control])
        assert rc == 0, out
        print(cls.info, flush=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, True)

    def field(self, name):
        rc, out = run(["dpkg-deb", "--field", self.deb, name])
        self.assertEqual(rc, 0, out)
        return out.strip()

    def unit_path(self):
        for p in UNIT_PATHS:
            if p in self.contents:
                return p
        self.fail("no systemd unit in the package (%s)" % " or ".join(UNIT_PATHS))

    # ---- control fields ----

    def test_fields(self):
        self.assertEqual(self.field("Package"), "mailmoat")
        self.assertEqual(self.field("Section"), "mail")
        self.assertRegex(self.field("Maintainer"), r".+<[^>]+>")
        self.assertTrue(self.field("Description"))
        if shutil.which("dpkg"):
            rc, arch = run(["dpkg", "--print-architecture"])
            self.assertEqual(self.field("Architecture"), arch.strip())
        # the version is the project's: the binary was built from the same tree
        rc, out = run([os.path.join(self.root, "usr/bin/mailmoat"), "--version"])
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.split(), ["mailmoat", self.field("Version")])
        self.assertIn("clamav-freshclam", dep_names(self.field("Recommends")))
        self.assertIn("nftables", dep_names(self.field("Suggests")))

    def test_depends_names_the_libraries(self):
        deps = dep_names(self.field("Depends"))
        self.assertIn("adduser", deps)  # postinst creates the system user
        for pat in LIB_PACKAGES:
            self.assertTrue(any(re.fullmatch(pat, d) for d in deps),
                            "no %s in Depends: %s" % (pat, sorted(deps)))

    def test_depends_covers_every_needed_library(self):
        """Each DT_NEEDED library of the packaged binary comes from a
        package that Depends lists (asked of this machine's dpkg)."""
        for tool in ("objdump", "ldd", "dpkg"):
            if shutil.which(tool) is None:
                self.skipTest("%s is not installed" % tool)
        binary = os.path.join(self.root, "usr/bin/mailmoat")
        rc, out = run(["objdump", "-p", binary])
        self.assertEqual(rc, 0, out)
        needed = re.findall(r"^\s*NEEDED\s+(\S+)", out, re.M)
        self.assertIn("libclamav.so", " ".join(needed))
        rc, out = run(["ldd", binary])
        self.assertEqual(rc, 0, out)
        where = dict(re.findall(r"^\s*(\S+) => (/\S+)", out, re.M))
        deps = dep_names(self.field("Depends"))
        for soname in needed:
            if soname.startswith("ld-linux"):
                continue
            self.assertIn(soname, where, "ldd does not resolve %s:\n%s" % (soname, out))
            path = where[soname]
            owners = None
            for cand in (path, os.path.realpath(path), "/usr" + path):
                rc, o = run(["dpkg", "-S", cand])
                if rc == 0:
                    owners = {x.split(":")[0].strip() for x in o.split(": ", 1)[0].split(",")}
                    break
            if owners is None:
                continue  # not from a package on this machine (a local build)
            self.assertTrue(owners & deps, "%s (%s, package %s) is not in Depends: %s"
                            % (soname, path, sorted(owners), sorted(deps)))

    # ---- files ----

    def test_contents(self):
        for p in DEB_PATHS + [self.unit_path()]:
            self.assertIn(p, self.contents, "%s missing from the package" % p)
            mode, owner = self.contents[p]
            self.assertEqual(owner, "root/root", p)
            self.assertTrue(mode.startswith("-"), "%s: %s" % (p, mode))
        self.assertEqual(self.contents["./usr/bin/mailmoat"][0], "-rwxr-xr-x")
        self.assertEqual(self.contents["./etc/mailmoat/mailmoat.yaml"][0], "-rw-r--r--")
        local = [p for p in self.contents if p.startswith("./usr/local")]
        self.assertEqual(local, [], "a Debian package installs nothing under /usr/local")
        # the package ships the tree's files unchanged
        src = mh.source_dir()
        for rel, pkg in [("deploy/mailmoat.example.yaml", "etc/mailmoat/mailmoat.yaml"),
                         ("deploy/mailmoat.example.yaml",
                          "usr/share/doc/mailmoat/mailmoat.example.yaml"),
                         ("scanners/testsigs/mailmoat-test.ndb",
                          "usr/share/mailmoat/testsigs/mailmoat-test.ndb"),
                         ("scanners/testsigs/mailmoat-test.hdb",
                          "usr/share/mailmoat/testsigs/mailmoat-test.hdb")]:
            with open(os.path.join(src, rel), "rb") as a, \
                    open(os.path.join(self.root, pkg), "rb") as b:
                self.assertEqual(a.read(), b.read(), "%s differs from %s" % (pkg, rel))

    def test_unit_names_packaged_paths(self):
        with open(os.path.join(self.root, self.unit_path())) as f:
            unit = f.read()
        self.assertNotIn("/usr/local", unit)
        execs = re.findall(r"^(ExecStartPre|ExecStart)=(\S+)(.*)$", unit, re.M)
        self.assertEqual([e[0] for e in execs], ["ExecStartPre", "ExecStart"], unit)
        for _, path, args in execs:
            self.assertEqual(path, "/usr/bin/mailmoat")
            self.assertIn("." + path, self.contents)
            self.assertIn(CONF, args)
        self.assertIn("." + CONF, self.contents)
        m = re.search(r"^Documentation=file://(\S+)$", unit, re.M)
        self.assertTrue(m, unit)
        self.assertIn("." + m.group(1), self.contents)

    def test_extracted_binary_accepts_packaged_config(self):
        binary = os.path.join(self.root, "usr/bin/mailmoat")
        rc, out = mh.check_config(os.path.join(self.root, CONF.lstrip("/")), binary=binary)
        self.assertEqual(rc, 0, out)
        self.assertIn("configuration OK", out)

    # ---- control archive ----

    def test_conffiles(self):
        with open(os.path.join(self.control, "conffiles")) as f:
            conffiles = f.read().split()
        self.assertEqual(conffiles, [CONF])
        for c in conffiles:
            self.assertIn("." + c, self.contents, "conffile %s not in the package" % c)

    def test_maintainer_scripts(self):
        sh = shutil.which("sh") or "/bin/sh"
        check = shutil.which("shellcheck")
        for name in ("postinst", "prerm", "postrm"):
            path = os.path.join(self.control, name)
            self.assertTrue(os.path.exists(path), "%s missing" % name)
            mode = stat.S_IMODE(os.stat(path).st_mode)
            self.assertEqual(mode, 0o755, "%s mode %o" % (name, mode))
            with open(path) as f:
                self.assertEqual(f.readline().strip(), "#!/bin/sh", name)
            rc, out = run([sh, "-n", path])
            self.assertEqual(rc, 0, "%s: %s" % (name, out))
            if check:
                rc, out = run([check, "-s", "sh", path])
                self.assertEqual(rc, 0, "shellcheck %s:\n%s" % (name, out))
        with open(os.path.join(self.control, "postinst")) as f:
            postinst = f.read()
        for word in ("adduser", "$STATE/quarantine", "$STATE/spool", "README"):
            self.assertIn(word, postinst)

    # ---- maintainer scripts run against stubs ----

    # Every external command the scripts may call is a stub that logs its
    # arguments; PATH holds nothing else, so a command without a stub fails
    # the script instead of reaching the host. MM_ACTIVE / MM_ENABLED say
    # what systemctl answers.
    STUBS = {
        "getent": "exit 2",                       # no such user or group
        "addgroup": "", "adduser": "", "install": "", "rmdir": "", "rm": "",
        "find": "", "wc": "echo 0", "ls": "",
        "systemctl": 'case "$*" in\n'
                     '*is-active*) [ "$MM_ACTIVE" = 1 ] || exit 3;;\n'
                     '*is-enabled*) [ "$MM_ENABLED" = 1 ] || exit 1;;\n'
                     'esac',
        # debian-installed / was-enabled: nothing recorded yet
        "deb-systemd-helper": 'case "$*" in *debian-installed*|*was-enabled*) exit 1;; esac',
        "deb-systemd-invoke": "",
        "cat": 'while IFS= read -r l; do printf "%s\\n" "$l"; done',
        "sed": 'while IFS= read -r l; do printf "%s\\n" "$l"; done',
    }

    # With systemd=True the script runs in a private mount namespace where
    # /run/systemd/system exists (systemd "running"), /etc holds only
    # mailmoat/mailmoat.yaml (conf) and /usr/bin only sh and the extracted
    # mailmoat, the path postinst checks the configuration with. The host's
    # mounts are not touched.
    NAMESPACE = (
        'set -e\n'
        'mount -t tmpfs tmpfs /run\n'
        'mkdir -p /run/systemd/system\n'
        'mount --bind "$MM_ETC" /etc\n'
        'mount --bind "$MM_USRBIN" /usr/bin\n'
        'PATH="$MM_STUBS" exec /bin/sh "$@"\n')

    def run_script(self, name, *args, systemd=False, conf=None, active=False,
                   enabled=False):
        d = tempfile.mkdtemp(prefix="stubs-", dir=self.tmp)
        stubs = os.path.join(d, "stubs")
        os.mkdir(stubs)
        log = os.path.join(d, "calls.log")
        for cmd, body in self.STUBS.items():
            p = os.path.join(stubs, cmd)
            with open(p, "w") as f:
                f.write('#!/bin/sh\nprintf "%%s\\n" "%s $*" >>"%s"\n%s\nexit 0\n'
                        % (cmd, log, body))
            os.chmod(p, 0o755)
        env = {"PATH": stubs, "LC_ALL": "C", "MM_ACTIVE": "1" if active else "0",
               "MM_ENABLED": "1" if enabled else "0"}
        script = os.path.join(self.control, name)
        cmd = ["/bin/sh", script] + list(args)
        if systemd:
            unshare = shutil.which("unshare")
            if os.geteuid() != 0 or unshare is None:
                self.skipTest("needs root and unshare for a private mount namespace")
            etc = os.path.join(d, "etc")
            os.makedirs(os.path.join(etc, "mailmoat"))
            if conf is not None:
                with open(os.path.join(etc, "mailmoat", "mailmoat.yaml"), "w") as f:
                    f.write(conf)
            usrbin = os.path.join(d, "usrbin")
            os.mkdir(usrbin)
            shutil.copy2(os.path.realpath("/bin/sh"), os.path.join(usrbin, "sh"))
            shutil.copy2(os.path.join(self.root, "usr/bin/mailmoat"),
                         os.path.join(usrbin, "mailmoat"))
            probe = subprocess.run([unshare, "--mount", "/bin/sh", "-c",
                                    "mount -t tmpfs tmpfs /run"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   timeout=30)
            if probe.returncode != 0:
                self.skipTest("no private mount namespace here (unshare --mount)")
            # the wrapper's mount and mkdir are the host's; the script
            # itself gets the stubs only
            env.update(MM_ETC=etc, MM_USRBIN=usrbin, MM_STUBS=stubs,
                       PATH="/usr/sbin:/usr/bin:/sbin:/bin")
            cmd = [unshare, "--mount", "/bin/sh", "-c", self.NAMESPACE,
                   "namespace", script] + list(args)
        r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        calls = []
        if os.path.exists(log):
            with open(log) as f:
                calls = f.read().splitlines()
        return r.returncode, r.stdout.decode("utf-8", "replace"), calls

    def assert_no_start(self, calls):
        for c in calls:
            self.assertNotRegex(c, r"^deb-systemd-invoke |^deb-systemd-helper enable"
                                   r"|^systemctl .*\b(enable|start|restart)\b", calls)

    def test_postinst_first_install(self):
        rc, out, calls = self.run_script("postinst", "configure", "")
        self.assertEqual(rc, 0, out + "\n".join(calls))
        self.assertIn("addgroup --system --quiet mailmoat", calls)
        add = [c for c in calls if c.startswith("adduser ")]
        self.assertEqual(len(add), 1, calls)
        for opt in ("--system", "--ingroup mailmoat", "--no-create-home",
                    "--home /var/lib/mailmoat"):
            self.assertIn(opt, add[0])
        self.assertTrue(add[0].endswith(" mailmoat"), add[0])
        # directories the host lacks are created for mailmoat, mode 0700
        for c in calls:
            if c.startswith("install "):
                self.assertRegex(c, r"^install -d -o mailmoat -g mailmoat -m 0700 "
                                    r"/var/lib/mailmoat(/quarantine|/spool)?$")
        # the example configuration does not work: nothing enabled or started
        self.assert_no_start(calls)
        self.assertIn("deb-systemd-helper update-state mailmoat.service", calls)
        self.assertIn("systemctl enable --now mailmoat", out)
        self.assertIn("/usr/share/doc/mailmoat/README.md", out)

    def test_postinst_first_install_under_systemd(self):
        with open(os.path.join(self.root, CONF.lstrip("/"))) as f:
            example = f.read()
        rc, out, calls = self.run_script("postinst", "configure", "", systemd=True,
                                         conf=example)
        self.assertEqual(rc, 0, out + "\n".join(calls))
        self.assertIn("systemctl --system daemon-reload", calls)
        self.assert_no_start(calls)

    def test_postinst_upgrade_restarts_a_running_service(self):
        with open(os.path.join(self.root, CONF.lstrip("/"))) as f:
            example = f.read()
        rc, out, calls = self.run_script("postinst", "configure", "0.0.9", systemd=True,
                                         conf=example, active=True)
        self.assertEqual(rc, 0, out + "\n".join(calls))
        self.assertIn("systemctl --system daemon-reload", calls)
        self.assertIn("deb-systemd-invoke restart mailmoat.service", calls)
        self.assertNotIn("NOT", out)

    def test_postinst_upgrade_keeps_old_daemon_on_bad_config(self):
        rc, out, calls = self.run_script("postinst", "configure", "0.0.9", systemd=True,
                                         conf="listeners: [\n", active=True)
        self.assertEqual(rc, 0, out + "\n".join(calls))
        self.assert_no_start(calls)
        self.assertIn("NOT (re)started", out)
        self.assertIn("mailmoat.yaml:", out)  # the check's own FILE:LINE report

    def test_postinst_upgrade_leaves_a_stopped_disabled_service(self):
        with open(os.path.join(self.root, CONF.lstrip("/"))) as f:
            example = f.read()
        rc, out, calls = self.run_script("postinst", "configure", "0.0.9", systemd=True,
                                         conf=example)
        self.assertEqual(rc, 0, out + "\n".join(calls))
        self.assert_no_start(calls)

    def test_postinst_reinstall_starts_an_enabled_service(self):
        with open(os.path.join(self.root, CONF.lstrip("/"))) as f:
            example = f.read()
        rc, out, calls = self.run_script("postinst", "configure", "0.0.9", systemd=True,
                                         conf=example, enabled=True)
        self.assertEqual(rc, 0, out + "\n".join(calls))
        self.assertIn("deb-systemd-invoke restart mailmoat.service", calls)

    def test_postrm_remove_and_purge(self):
        rc, out, calls = self.run_script("postrm", "remove")
        self.assertEqual(rc, 0, out)
        self.assertIn("deb-systemd-helper mask mailmoat.service", calls)
        rc, out, calls = self.run_script("postrm", "purge")
        self.assertEqual(rc, 0, out)
        self.assertIn("deb-systemd-helper purge mailmoat.service", calls)
        # the user stays (Debian keeps system users)
        self.assertFalse([c for c in calls if re.match(r"(deluser|userdel|delgroup)", c)])

    def test_prerm_stops_only_on_remove(self):
        rc, out, calls = self.run_script("prerm", "upgrade", "0.1.0", systemd=True)
        self.assertEqual(rc, 0, out)
        self.assertEqual([c for c in calls if "stop" in c], [])
        rc, out, calls = self.run_script("prerm", "remove", systemd=True)
        self.assertEqual(rc, 0, out)
        self.assertIn("deb-systemd-invoke stop mailmoat.service", calls)


if __name__ == "__main__":
    unittest.main()
