"""The server's configuration layers, its JSON logs, and bin/install (issue 18).

* `natchat-server --print-config` with a --config file, NATCHAT_SERVER_* variables and
  options: the command line wins over the environment, which wins over the file; the source
  column says which; an unknown file key and bad values are refused naming their source.
* A setting from the environment takes effect: a server started with NATCHAT_SERVER_PORT
  (and no --port) answers a STUN binding request on that port, and with
  NATCHAT_SERVER_LOG_FORMAT=json its stderr is one JSON object per line.
* `bin/install --from-build $NATCHAT_BIN_DIR --prefix TMP --systemd-unit yes`: the files are
  there, `man -l` renders both pages, every option of `--help` is in the page (the pages
  are generated from the same definitions: they must not drift), the completion scripts are
  non-empty and `bash -n` accepts the bash ones, `systemd-analyze verify` accepts the unit
  (skipped loudly without systemd-analyze); `--uninstall` removes every file it installed.

Every process is run with a timeout or owned by a ProcessGroup that kills it by PID.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    REPO,
    SERVER_BIN,
    ProcessGroup,
    binary_path,
    bin_dir,
    free_udp_port,
    require_binaries,
)

RUN_TIMEOUT = 30.0
INSTALL_TIMEOUT = float(os.environ.get("NATCHAT_INSTALL_TIMEOUT", "600"))  # may build generate-manual


def clean_env(**extra):
    """The test's environment without any NATCHAT_SERVER_* of the caller's, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATCHAT_SERVER_")}
    env.update(extra)
    return env


def print_config(*args, env=None):
    """Runs natchat-server --print-config; returns (exit status, {key: (value, source)}, stderr)."""
    result = subprocess.run([str(binary_path(SERVER_BIN)), *args, "--print-config"], env=env or clean_env(),
                            capture_output=True, text=True, timeout=RUN_TIMEOUT)
    settings = {}
    for line in result.stdout.splitlines():
        parts = re.split(r" {2,}", line.strip())
        if len(parts) == 3:
            settings[parts[0]] = (parts[1], parts[2])
    return result.returncode, settings, result.stderr


class ConfigPrecedenceTest(unittest.TestCase):

    def setUp(self):
        require_binaries(self, SERVER_BIN)
        self.tmp = tempfile.mkdtemp(prefix="natchat-config-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def write_config(self, obj, name="natchat-server.json"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(obj if isinstance(obj, str) else json.dumps(obj))
        return path

    def test_file_then_environment_then_command_line(self):
        path = self.write_config({"port": 7001, "bind": "127.0.0.2", "keepalive-timeout": 12,
                                  "log-format": "json", "admin": "127.0.0.1:0"})
        env = clean_env(NATCHAT_SERVER_PORT="7002", NATCHAT_SERVER_BIND="127.0.0.3")
        status, settings, stderr = print_config("--config", path, "--port", "7003", env=env)
        self.assertEqual(status, 0, stderr)
        self.assertEqual(settings["config"], (path, "command line"))
        self.assertEqual(settings["port"], ("7003", "command line"))
        self.assertEqual(settings["bind"], ("127.0.0.3", "environment NATCHAT_SERVER_BIND"))
        self.assertEqual(settings["keepalive-timeout"], ("12", f"file {path} key keepalive-timeout"))
        self.assertEqual(settings["log-format"], ("json", f"file {path} key log-format"))
        self.assertEqual(settings["admin"], ("127.0.0.1:0", f"file {path} key admin"))
        self.assertEqual(settings["sweep-interval"], ("10.0", "default"))
        # Every option of serve's --help is a setting (but --print-config, which is an
        # action), and nothing else is: an option added without its setting fails here.
        result = subprocess.run([str(binary_path(SERVER_BIN)), "serve", "--help"], capture_output=True, text=True,
                                timeout=RUN_TIMEOUT, env=clean_env())
        options = set(re.findall(r"^  --([a-z][a-z0-9-]+)", result.stdout, re.MULTILINE)) - {"help", "print-config"}
        self.assertGreater(len(options), 20, result.stdout)
        self.assertEqual(set(settings), options)

        # Without the option, the environment; without either, the file.
        _, settings, _ = print_config("--config", path, env=env)
        self.assertEqual(settings["port"], ("7002", "environment NATCHAT_SERVER_PORT"))
        _, settings, _ = print_config("--config", path)
        self.assertEqual(settings["port"], ("7001", f"file {path} key port"))
        self.assertEqual(settings["bind"], ("127.0.0.2", f"file {path} key bind"))

    def test_the_file_can_be_named_by_the_environment(self):
        path = self.write_config({"max-clients": 42})
        status, settings, stderr = print_config(env=clean_env(NATCHAT_SERVER_CONFIG=path))
        self.assertEqual(status, 0, stderr)
        self.assertEqual(settings["config"], (path, "environment NATCHAT_SERVER_CONFIG"))
        self.assertEqual(settings["max-clients"], ("42", f"file {path} key max-clients"))

    def test_an_unknown_file_key_is_refused(self):
        path = self.write_config({"port": 7001, "keepalive-timout": 5})
        status, settings, stderr = print_config("--config", path)
        self.assertEqual(status, 64, stderr)
        self.assertEqual(settings, {})
        self.assertIn(path, stderr)
        self.assertIn("'keepalive-timout' (did you mean 'keepalive-timeout'?)", stderr)

    def test_bad_values_are_refused_naming_their_source(self):
        path = self.write_config({"port": "ten"})
        status, _, stderr = print_config("--config", path)
        self.assertEqual(status, 64, stderr)
        self.assertIn(f"file {path} key port: the value 'ten' is invalid for --port", stderr)

        path = self.write_config({"alt-port": 70000}, name="range.json")
        status, _, stderr = print_config("--config", path)
        self.assertEqual(status, 64, stderr)
        self.assertIn(f"--alt-port (file {path} key alt-port) must be 0...65535", stderr)

        status, _, stderr = print_config(env=clean_env(NATCHAT_SERVER_LOG_FORMAT="xml"))
        self.assertEqual(status, 64, stderr)
        self.assertIn("environment NATCHAT_SERVER_LOG_FORMAT: the value 'xml' is invalid for --log-format (one of text, json)", stderr)

        status, _, stderr = print_config(env=clean_env(NATCHAT_SERVER_ADMIN="nowhere"))
        self.assertEqual(status, 64, stderr)
        self.assertIn("--admin (environment NATCHAT_SERVER_ADMIN): 'nowhere' is neither HOST:PORT nor off", stderr)

        status, _, stderr = print_config("--config", os.path.join(self.tmp, "missing.json"))
        self.assertEqual(status, 64, stderr)
        self.assertIn("missing.json", stderr)

    def test_a_password_in_the_store_url_is_not_printed(self):
        status, settings, stderr = print_config("--store", "postgres://natchat:s3cret@db.example/natchat")
        self.assertEqual(status, 0, stderr)
        self.assertEqual(settings["store"], ("postgres://natchat:****@db.example/natchat", "command line"))


def stun_binding(port, timeout=5.0):
    """Sends one STUN binding request to 127.0.0.1:port; returns the response's bytes (or None)."""
    transaction = os.urandom(12)
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout / 5)
        s.bind(("127.0.0.1", 0))
        for _ in range(5):  # UDP: a few tries, bounded
            s.sendto(request, ("127.0.0.1", port))
            try:
                data, _ = s.recvfrom(2048)
            except socket.timeout:
                continue
            if len(data) >= 20 and data[8:20] == transaction:
                return data
    return None


class SettingTakesEffectTest(unittest.TestCase):

    def setUp(self):
        require_binaries(self, SERVER_BIN)
        self.g = ProcessGroup()
        self.addCleanup(self.g.stop_all)

    def test_the_port_from_the_environment_answers_and_json_logs_parse(self):
        port = free_udp_port()
        env = clean_env(NATCHAT_SERVER_PORT=str(port), NATCHAT_SERVER_BIND="127.0.0.1",
                        NATCHAT_SERVER_ALT_PORT="0", NATCHAT_SERVER_ADMIN="off",
                        NATCHAT_SERVER_STORE="memory", NATCHAT_SERVER_LOG_FORMAT="json",
                        NATCHAT_SERVER_LOG_LEVEL="debug")
        server = self.g.start("natchat-server", [binary_path(SERVER_BIN)], env=env)
        # The seed's event line on stdout is unchanged.
        server.wait_for_line(r"server program starts\.\.\.\.")
        response = stun_binding(port)
        self.assertIsNotNone(response, f"no STUN answer on port {port} (NATCHAT_SERVER_PORT)\n{server.describe()}")
        self.assertEqual(response[0:2], b"\x01\x01", "a binding success response")

        server.wait_for_line(r'.*"msg":"listening".*', stream="stderr")
        lines = server.lines("stderr")
        self.assertTrue(lines, "no diagnostics on stderr")
        for line in lines:
            record = json.loads(line)  # every line is one JSON object
            self.assertIsInstance(record, dict, line)
            for field in ("ts", "level", "label", "msg"):
                self.assertIsInstance(record.get(field), str, f"{field} in {line}")
            self.assertRegex(record["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertIn(record["level"], ("trace", "debug", "info", "notice", "warning", "error", "critical"))
        listening = [json.loads(line) for line in lines if json.loads(line)["msg"] == "listening"]
        self.assertTrue(any(str(port) in r.get("address", "") for r in listening), lines)


class InstallTest(unittest.TestCase):

    def setUp(self):
        require_binaries(self, SERVER_BIN, "natchat")
        for tool in ("man", "install"):
            if shutil.which(tool) is None:
                self.fail(f"{tool} is missing (apt-get install man-db coreutils)")
        self.prefix = tempfile.mkdtemp(prefix="natchat-install-")
        self.addCleanup(shutil.rmtree, self.prefix, ignore_errors=True)

    def run_install(self, *args):
        result = subprocess.run([str(REPO / "bin" / "install"), "--prefix", self.prefix, *args],
                                capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                                env=clean_env())
        self.assertEqual(result.returncode, 0, f"bin/install {' '.join(args)}:\n{result.stdout}{result.stderr}")
        return result

    def render(self, page):
        result = subprocess.run(["man", "-l", page], capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                env=clean_env(MANWIDTH="80", MANPAGER="cat", PAGER="cat", LC_ALL="C", LANG="C"))
        self.assertEqual(result.returncode, 0, result.stderr)
        # Undo any overstrike formatting (bold, underline). LC_ALL=C: ASCII hyphens.
        return re.sub(r".\x08", "", result.stdout)

    def help_options(self, *command):
        result = subprocess.run([str(binary_path(command[0])), *command[1:], "--help"], capture_output=True,
                                text=True, timeout=RUN_TIMEOUT, env=clean_env())
        self.assertEqual(result.returncode, 0, result.stderr)
        return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", result.stdout)) - {"--help"}

    def test_install_renders_verifies_and_uninstalls(self):
        self.run_install("--from-build", str(bin_dir()), "--systemd-unit", "yes")
        p = self.prefix
        expected = [
            "bin/natchat", "bin/natchat-server",
            "share/man/man1/natchat.1", "share/man/man8/natchat-server.8",
            "share/bash-completion/completions/natchat", "share/bash-completion/completions/natchat-server",
            "share/zsh/site-functions/_natchat", "share/zsh/site-functions/_natchat-server",
            "share/fish/vendor_completions.d/natchat.fish", "share/fish/vendor_completions.d/natchat-server.fish",
            "lib/systemd/system/natchat-server.service",
        ]
        for relative in expected:
            path = os.path.join(p, relative)
            self.assertTrue(os.path.isfile(path), f"{relative} not installed")
            self.assertGreater(os.path.getsize(path), 0, f"{relative} is empty")
        self.assertTrue(os.access(os.path.join(p, "bin/natchat-server"), os.X_OK))

        # The pages render, name their section, and document every option --help lists.
        server_page = self.render(os.path.join(p, "share/man/man8/natchat-server.8"))
        self.assertIn("NATCHAT-SERVER(8)", server_page)
        client_page = self.render(os.path.join(p, "share/man/man1/natchat.1"))
        self.assertIn("NATCHAT(1)", client_page)
        for command, page in ((("natchat-server", "serve"), server_page),
                              (("natchat-server", "claims", "list"), server_page),
                              (("natchat",), client_page)):
            options = self.help_options(*command)
            self.assertTrue(options, f"{command}: no options in --help")
            missing = sorted(o for o in options if o not in page)
            self.assertEqual(missing, [], f"{' '.join(command)} --help options missing from its man page")
        for option in ("--config", "--print-config", "--log-format", "NATCHAT_SERVER_PORT"):
            self.assertIn(option, server_page)

        # Completions: non-empty, and bash accepts the bash scripts.
        for program in ("natchat", "natchat-server"):
            script = os.path.join(p, "share/bash-completion/completions", program)
            result = subprocess.run(["bash", "-n", script], capture_output=True, text=True, timeout=RUN_TIMEOUT)
            self.assertEqual(result.returncode, 0, result.stderr)
            with open(os.path.join(p, "share/zsh/site-functions", "_" + program)) as f:
                self.assertTrue(f.read().startswith("#compdef"), f"_{program} is not a zsh completion")
            with open(os.path.join(p, "share/fish/vendor_completions.d", program + ".fish")) as f:
                self.assertIn(f"complete -c '{program}'", f.read())

        # The unit: at the installed path, hardened, and systemd accepts it.
        unit = os.path.join(p, "lib/systemd/system/natchat-server.service")
        with open(unit) as f:
            text = f.read()
        self.assertIn(f"ExecStart={p}/bin/natchat-server serve", text)
        for line in ("DynamicUser=yes", "StateDirectory=natchat-server", "NoNewPrivileges=yes", "ProtectSystem=strict",
                     "ProtectHome=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"):
            self.assertIn(line + "\n", text)
        if shutil.which("systemd-analyze") is None:
            sys.stderr.write("\n*** SKIPPED: systemd-analyze verify (apt-get install systemd) ***\n")
        else:
            # MANPATH: verify also checks that Documentation=man:natchat-server(8) exists.
            result = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True,
                                    timeout=RUN_TIMEOUT, env=clean_env(MANPATH=os.path.join(p, "share/man")))
            self.assertEqual(result.returncode, 0, f"systemd-analyze verify:\n{result.stdout}{result.stderr}")

        # --uninstall removes every file it installed, and the manifest.
        self.run_install("--uninstall")
        left = [os.path.relpath(os.path.join(d, f), p) for d, _, files in os.walk(p) for f in files]
        self.assertEqual(left, [], "files left after --uninstall")
