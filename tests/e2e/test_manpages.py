"""The man pages (man/*.scd) in step with the programs: the options of
`modelbufd --help` are those of modelbufd(8); the commands of `modelbuf
--help` are the sections of modelbuf(1), and each command's (and each
benchmark's) `--help` lists the options its section does. When scdoc is
there, every page builds without a warning. modelbuf.yaml(5) names every
key of the configuration's schema."""
import json
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MODELBUF_BUILD", os.path.join(ROOT, "build"))
DAEMON = os.path.join(BUILD, "daemon", "modelbufd")
TOOL = os.path.join(BUILD, "cli", "modelbuf")
MAN = os.path.join(ROOT, "man")
FLAG = r"--?[A-Za-z][\w-]*"


def help_text(*argv):
    p = subprocess.run(list(argv) + ["--help"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", (argv, p.stderr)
    return p.stdout


def help_options(text):
    """The flags an option list names at the start of its lines:
    "  -c, --config FILE   ..." and "      --check-config [FILE] ..."."""
    flags = set()
    for line in text.splitlines():
        m = re.match(r"^\s+((?:-{1,2}[\w-]+(?:[ =]\[?[A-Z][A-Z_]*\]?)?(?:, )?)+)", line)
        if m:
            flags |= set(re.findall(FLAG, m.group(1)))
    return flags


def scd_sections(page, level="#"):
    """{title: text} of a page's sections at a level ("#" or "##")."""
    with open(os.path.join(MAN, page)) as f:
        text = f.read()
    out, title = {}, None
    for line in text.splitlines():
        if line.startswith(level + " "):
            title = line[len(level) + 1:].strip()
            out[title] = ""
        elif re.match(r"^#{1,2} ", line) and len(line.split(" ")[0]) < len(level):
            title = None  # a higher section ends the run
        elif title is not None:
            out[title] += line + "\n"
    return out


def scd_options(text):
    """The flags of a section's definition terms: lines that start with a
    bold flag, such as "*-c*, *--config* _FILE_"."""
    flags = set()
    for line in text.splitlines():
        if line.startswith("*-"):
            flags |= set(re.findall(r"\*(" + FLAG + r")\*", line))
    return flags


def test_modelbufd_options_match():
    want = help_options(help_text(DAEMON))
    assert {"--config", "--check-config", "--print-schema", "--help"} <= want
    got = scd_options(scd_sections("modelbufd.8.scd")["OPTIONS"])
    assert got == want, f"only in --help: {want - got}; only in modelbufd(8): {got - want}"


def test_modelbuf_commands_and_options_match():
    top = help_text(TOOL)
    commands = re.findall(r"^  ([a-z-]+)  ", top.split("Commands:")[1].split("Options:")[0], re.M)
    sections = scd_sections("modelbuf.1.scd", "##")
    documented = {s for s in sections if " " not in s}
    assert set(commands) == documented, (set(commands) ^ documented)
    assert scd_options(scd_sections("modelbuf.1.scd")["OPTIONS"]) == help_options(
        top.split("Options:")[1])
    benchmarks = re.findall(r"^  ([a-z-]+)  ", help_text(TOOL, "bench").split("Benchmarks:")[1]
                            .split("Options:")[0], re.M)
    assert benchmarks == ["lifecycle", "load", "offload", "restore"]
    for name in commands + ["bench " + b for b in benchmarks]:
        want = help_options(help_text(TOOL, *name.split())) - {"-h", "--help"}
        got = scd_options(sections[name])
        assert got == want, (f"{name}: only in --help: {want - got}; "
                             f"only in modelbuf(1): {got - want}")


def test_pages_build_cleanly(tmp_path):
    scdoc = shutil.which("scdoc")
    if scdoc is None:
        pytest.skip("scdoc is not installed (scripts/deps.sh)")
    for page in sorted(os.listdir(MAN)):
        if not page.endswith(".scd"):
            continue
        with open(os.path.join(MAN, page)) as f:
            p = subprocess.run([scdoc], stdin=f, capture_output=True, text=True)
        assert p.returncode == 0 and p.stderr == "", (page, p.stderr)
        out = tmp_path / page[:-4]
        out.write_text(p.stdout)
        if shutil.which("man"):
            m = subprocess.run(["man", "--warnings", "-l", str(out)], capture_output=True,
                               text=True, env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8"))
            assert m.returncode == 0 and m.stderr == "", (page, m.stderr)


def test_every_configuration_key_is_in_modelbuf_yaml_5():
    """Each key the parser's tables hold (as modelbufd --print-schema
    writes them: the top level and every nested mapping) is named, in bold,
    by modelbuf.yaml(5)."""
    p = subprocess.run([DAEMON, "--print-schema"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    schema = json.loads(p.stdout)
    keys = set(schema["properties"])
    for d in schema["definitions"].values():
        keys |= set(d.get("properties", {}))
    with open(os.path.join(MAN, "modelbuf.yaml.5.scd")) as f:
        page = f.read()
    missing = sorted(k for k in keys if f"*{k}*" not in page)
    assert not missing, f"not in modelbuf.yaml(5): {missing}"
