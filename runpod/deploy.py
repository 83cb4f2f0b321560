"""Create (or reuse) the voicekit RunPod template and start a pod from it, with the `runpod` SDK.

    export RUNPOD_API_KEY=...   # https://www.runpod.io/console/user/settings; never printed
    export HF_TOKEN=...         # passed to the pod (the gpu preset's models are gated); never printed
    python runpod/deploy.py --dry-run                   # show the exact GraphQL requests, secrets masked
    python runpod/deploy.py --gpu "NVIDIA GeForce RTX 4090" --cloud SECURE --volume-gb 60
    python runpod/deploy.py --template-only             # just the template and its one-click deploy link
    python runpod/deploy.py --image ghcr.io/OWNER/voicekit:latest   # an image built from runpod/Dockerfile

The template's fields come from runpod/template.json. By default the pod runs a stock public image (CUDA 13.0
toolkit) whose start command clones the repository (`--git-url`, default: this checkout's `origin`) onto the
volume and runs runpod/bootstrap.sh; `--image` uses a voicekit image instead, started with runpod/start.sh.
Pods are only placed on hosts whose driver's CUDA version is one of `--cuda-versions`. RunPod matches the versions
exactly (a host whose driver reports 13.1 is not one of "13.0"), so the default lists 13.0, the CUDA build of torch
that vLLM pins, and every later version RunPod offers (`RUNPOD_CUDA_VERSIONS`: today 13.0 is the newest, so
["13.0"]; add a new 13.x there and to template.json when RunPod offers it). The SDK posts to
`$RUNPOD_API_BASE_URL/graphql` (default https://api.runpod.io); `--api-url` sets that variable, e.g. for a local
stand-in in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TEMPLATE_FILE = HERE / "template.json"
DEFAULT_API_URL = "https://api.runpod.io"
DEFAULT_GPU = "NVIDIA GeForce RTX 4090"
SECRET_ENV = ("HF_TOKEN", "VOICEKIT_PASSWORD", "VOICEKIT_API_KEY")
PASSED_ENV = (*SECRET_ENV, "VOICEKIT_PRESET", "VOICEKIT_POD_MODE")  # copied from this shell to the pod when set
MASK = "***"
TEMPLATES_QUERY = "query { myself { podTemplates { id name imageName dockerArgs } } }"
GIT_ENV = ("VOICEKIT_GIT_URL", "VOICEKIT_GIT_REF")  # only the stock-image path clones the repository
GIT_URL_PLACEHOLDER = "<VOICEKIT_GIT_URL>"
# The CUDA versions RunPod's pod API accepts in allowedCudaVersions (its REST reference's enum, read 2026-12), newest
# first, and the oldest one torch 2.13's CUDA 13.0 build runs on.
RUNPOD_CUDA_VERSIONS = ("13.0", "12.9", "12.8", "12.7", "12.6", "12.5", "12.4", "12.3", "12.2", "12.1", "12.0",
                        "11.8")
MIN_CUDA = "13.0"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def cuda_versions_from(minimum: str = MIN_CUDA, offered: Sequence[str] = RUNPOD_CUDA_VERSIONS) -> list[str]:
    """Every CUDA version RunPod offers from `minimum` on, oldest first (RunPod matches each one exactly)."""
    return sorted((item for item in offered if _version(item) >= _version(minimum)), key=_version)


class DeployError(Exception):
    """A one-line reason to stop, shown without a traceback."""


def load_template(path: Path = TEMPLATE_FILE) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    template = load_template()
    parser = argparse.ArgumentParser(description="create/reuse the voicekit RunPod template and start a pod")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help=f"RunPod GPU type id (default {DEFAULT_GPU!r})")
    parser.add_argument("--cloud", default="SECURE", type=str.upper, choices=("ALL", "SECURE", "COMMUNITY"),
                        help="cloud type (default SECURE)")
    parser.add_argument("--volume-gb", type=int, default=template["volumeInGb"], help="pod volume at /workspace")
    parser.add_argument("--container-disk-gb", type=int, default=template["containerDiskInGb"])
    parser.add_argument("--image", help="an image built from runpod/Dockerfile, e.g. ghcr.io/OWNER/voicekit:latest "
                        f"(default: the stock {template['imageName']} + a git clone of --git-url)")
    parser.add_argument("--git-url", help="repository the stock-image pod clones (default: VOICEKIT_GIT_URL, else "
                        "this checkout's origin)")
    parser.add_argument("--git-ref", help="branch or tag to clone (default: VOICEKIT_GIT_REF, else template.json)")
    parser.add_argument("--cuda-versions", default=",".join(template["allowedCudaVersions"]),
                        help="host CUDA versions a pod may run on, comma-separated (default %(default)s)")
    parser.add_argument("--name", default="voicekit", help="pod name")
    parser.add_argument("--template-name", default=template["name"], help="template to reuse or create")
    parser.add_argument("--template-only", action="store_true", help="create/reuse the template, print the link")
    parser.add_argument("--dry-run", action="store_true", help="print the requests without sending anything")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the pod to run")
    parser.add_argument("--wait-s", type=float, default=900.0, help="how long to wait for the pod (default 900)")
    parser.add_argument("--poll-s", type=float, default=5.0, help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=f"RunPod API base (RUNPOD_API_BASE_URL; default {DEFAULT_API_URL})")
    args = parser.parse_args(argv)
    if args.volume_gb < 1 or args.container_disk_gb < 1:
        parser.error("--volume-gb and --container-disk-gb must be at least 1")
    args.cuda_versions = [item.strip() for item in args.cuda_versions.split(",") if item.strip()]
    if not all(re.fullmatch(r"\d+\.\d+", item) for item in args.cuda_versions):
        parser.error("--cuda-versions takes versions like 13.0 (comma-separated)")
    old = [item for item in args.cuda_versions if _version(item) < _version(MIN_CUDA)]
    if old:
        parser.error(f"--cuda-versions {', '.join(old)}: the gpu preset's torch is a CUDA {MIN_CUDA} build and does "
                     f"not run on a host whose driver stops at CUDA {old[0]}")
    unknown = [item for item in args.cuda_versions if item not in RUNPOD_CUDA_VERSIONS]
    if unknown:
        print(f"note: RunPod listed {', '.join(cuda_versions_from())} of CUDA {MIN_CUDA} and later when this was "
              f"written; {', '.join(unknown)} is passed as given (a host is matched only if RunPod offers it)",
              file=sys.stderr)
    return args


def origin_url(repo: Path = HERE.parent) -> str | None:
    """The checkout's `origin` remote, if it has one."""
    try:
        found = subprocess.run(["git", "-C", str(repo), "remote", "get-url", "origin"], capture_output=True,
                               text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() or None


def git_source(args: argparse.Namespace, environ: Mapping[str, str], template: Mapping[str, Any],
               required: bool) -> dict[str, str]:
    """VOICEKIT_GIT_URL and VOICEKIT_GIT_REF for the stock-image path (empty for --image)."""
    if args.image:
        return {}
    defaults = {item["key"]: item.get("value", "") for item in template["env"]}
    url = args.git_url or environ.get("VOICEKIT_GIT_URL") or origin_url()
    ref = args.git_ref or environ.get("VOICEKIT_GIT_REF") or defaults.get("VOICEKIT_GIT_REF") or "main"
    if not url:
        if required:
            raise DeployError("no repository for the pod to clone: pass --git-url "
                              "https://github.com/OWNER/voicekit.git (or set VOICEKIT_GIT_URL), or --image with an "
                              "image built from runpod/Dockerfile")
        url = GIT_URL_PLACEHOLDER
    elif re.match(r"[a-z][a-z0-9+.-]*://[^/@]*:[^/@]*@", url, re.IGNORECASE):
        raise DeployError("the git URL holds a password or token, which the template would show to anyone with "
                          "it: use a public URL")
    return {"VOICEKIT_GIT_URL": _check_value("VOICEKIT_GIT_URL", url),
            "VOICEKIT_GIT_REF": _check_value("VOICEKIT_GIT_REF", ref)}


def image_and_start(args: argparse.Namespace, template: Mapping[str, Any]) -> tuple[str, str]:
    """(image, start command): the stock image + git bootstrap, or --image + runpod/start.sh."""
    if args.image:
        return _check_value("--image", args.image), template["imageStartCmd"]
    return template["imageName"], _check_value("dockerStartCmd", template["dockerStartCmd"])


def _check_value(key: str, value: str) -> str:
    # The SDK writes values into the GraphQL text without escaping them.
    if re.search(r'["\\\n\r]', value):
        raise DeployError(f"{key} contains a quote, backslash or newline, which the RunPod SDK cannot send")
    return value


def _template_env(template: Mapping[str, Any], git: Mapping[str, str]) -> dict[str, str]:
    env = {item["key"]: _check_value(item["key"], item.get("value", "")) for item in template["env"]
           if git or item["key"] not in GIT_ENV}
    env.update(git)
    return env


def template_fields(args: argparse.Namespace, template: Mapping[str, Any], git: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of runpod.create_template (no secret values: the template may be shared)."""
    image, start = image_and_start(args, template)
    return {
        "name": args.template_name, "image_name": image, "docker_start_cmd": start,
        "container_disk_in_gb": args.container_disk_gb, "volume_in_gb": args.volume_gb,
        "volume_mount_path": template["volumeMountPath"], "ports": template["ports"],
        "env": _template_env(template, git),
    }


def pod_env(environ: Mapping[str, str], template: Mapping[str, Any], git: Mapping[str, str]) -> dict[str, str]:
    """The template's variables, overridden by those set in this shell (secrets: the template leaves them empty)."""
    env = _template_env(template, git)
    env.update({key: _check_value(key, environ[key]) for key in PASSED_ENV if environ.get(key)})
    return env


def pod_fields(args: argparse.Namespace, template: Mapping[str, Any], template_id: str,
               env: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of runpod.create_pod (only hosts whose driver supports --cuda-versions)."""
    image, start = image_and_start(args, template)
    return {
        "name": args.name, "image_name": image, "gpu_type_id": args.gpu, "cloud_type": args.cloud,
        "volume_in_gb": args.volume_gb, "container_disk_in_gb": args.container_disk_gb,
        "volume_mount_path": template["volumeMountPath"], "ports": template["ports"], "env": dict(env),
        "template_id": template_id, "docker_args": start, "support_public_ip": True,
        "allowed_cuda_versions": list(args.cuda_versions),
    }


def masked(env: Mapping[str, str]) -> dict[str, str]:
    return {key: (MASK if key in SECRET_ENV and value else value) for key, value in env.items()}


def proxy_urls(pod_id: str, ports: str) -> list[str]:
    """`https://{POD_ID}-{PORT}.proxy.runpod.net` for each HTTP port ("7860/http,8888/http")."""
    http_ports = [item.split("/")[0] for item in ports.split(",") if item.strip().endswith("/http")]
    return [f"https://{pod_id}-{port}.proxy.runpod.net" for port in http_ports]


def deploy_link(template_id: str) -> str:
    return f"https://console.runpod.io/deploy?template={template_id}"


def dry_run(args: argparse.Namespace, template: Mapping[str, Any], env: Mapping[str, str],
            git: Mapping[str, str], api_url: str) -> int:
    """Print the GraphQL requests the SDK would send (API key and secrets masked); send nothing."""
    from runpod.api.mutations.pods import generate_pod_deployment_mutation
    from runpod.api.mutations.templates import generate_pod_template

    key = os.environ.get("RUNPOD_API_KEY", "")
    print(f"dry run: nothing is sent. POST {api_url}/graphql")
    print(f"Authorization: Bearer {MASK if key else '(RUNPOD_API_KEY is not set)'}")
    if git.get("VOICEKIT_GIT_URL") == GIT_URL_PLACEHOLDER:
        print(f"# note: no --git-url and no origin remote; a real run stops until one is given ({GIT_URL_PLACEHOLDER})")
    print(f"# 1. find a template named {args.template_name!r}:\n{TEMPLATES_QUERY}")
    print("# 2. if there is none, create it:")
    print(generate_pod_template(**template_fields(args, template, git)))
    if args.template_only:
        return 0
    fields = pod_fields(args, template, "<TEMPLATE_ID>", masked(env))
    print(f"# 3. check the GPU type {args.gpu!r} exists (gpuTypes query), then start the pod:")
    # the same arguments runpod.create_pod passes (its defaults: start_ssh, one GPU, 1 vCPU, 1 GB RAM at least)
    print(generate_pod_deployment_mutation(
        name=fields["name"], image_name=fields["image_name"], gpu_type_id=fields["gpu_type_id"],
        cloud_type=fields["cloud_type"], support_public_ip=fields["support_public_ip"], start_ssh=True,
        gpu_count=1, volume_in_gb=fields["volume_in_gb"], container_disk_in_gb=fields["container_disk_in_gb"],
        min_vcpu_count=1, min_memory_in_gb=1, docker_args=fields["docker_args"], ports=fields["ports"],
        volume_mount_path=fields["volume_mount_path"], env=fields["env"], template_id=fields["template_id"],
        allowed_cuda_versions=fields["allowed_cuda_versions"]))
    print("pod env: " + json.dumps(masked(env), sort_keys=True))
    return 0


def find_or_create_template(runpod: Any, args: argparse.Namespace, template: Mapping[str, Any],
                            git: Mapping[str, str]) -> str:
    from runpod.api.graphql import run_graphql_query

    image, start = image_and_start(args, template)
    answer = run_graphql_query(TEMPLATES_QUERY)
    for item in ((answer.get("data") or {}).get("myself") or {}).get("podTemplates") or []:
        if item.get("name") == args.template_name:
            print(f"template: reusing {item['id']} ({args.template_name})")
            if item.get("imageName") != image or item.get("dockerArgs", start) != start:
                print(f"  note: its image or start command differs from this deploy's ({image}); the pod gets this "
                      "deploy's, the one-click link the template's: delete the template in the console or pass "
                      "--template-name to make a new one")
            return str(item["id"])
    created = runpod.create_template(**template_fields(args, template, git))
    print(f"template: created {created['id']} ({args.template_name})")
    return str(created["id"])


def wait_running(get_pod: Callable[[str], Any], pod_id: str, wait_s: float, poll_s: float) -> dict[str, Any]:
    """Poll until the pod reports a runtime (the container started)."""
    deadline = time.monotonic() + wait_s
    while True:
        pod = get_pod(pod_id) or {}
        if pod.get("desiredStatus") == "RUNNING" and pod.get("runtime"):
            return pod
        if pod.get("desiredStatus") in ("EXITED", "TERMINATED"):
            raise DeployError(f"pod {pod_id} stopped ({pod.get('desiredStatus')}); see its log in the console")
        if time.monotonic() >= deadline:
            raise DeployError(f"pod {pod_id} is not running after {wait_s:.0f} s; check the console")
        print(f"  waiting for pod {pod_id} ({pod.get('desiredStatus') or 'starting'}) ...", flush=True)
        time.sleep(poll_s)


def deploy(args: argparse.Namespace, template: Mapping[str, Any], env: Mapping[str, str],
           git: Mapping[str, str], key: str) -> int:
    import runpod

    runpod.api_key = key
    template_id = find_or_create_template(runpod, args, template, git)
    print(f"one-click deploy link: {deploy_link(template_id)}")
    if args.template_only:
        return 0
    if not env.get("HF_TOKEN"):
        print("warning: HF_TOKEN is not set here: the gpu preset on the pod will stop and ask for it", file=sys.stderr)
    try:
        pod = runpod.create_pod(**pod_fields(args, template, template_id, env))
    except ValueError as error:  # unknown GPU type, bad cloud type
        raise DeployError(f"{error} (GPU ids look like {DEFAULT_GPU!r})") from None
    if not pod or not pod.get("id"):
        raise DeployError(f"RunPod did not start a pod (no {args.gpu!r} free in {args.cloud} cloud?); try another "
                          "--gpu or --cloud ALL")
    pod_id = str(pod["id"])
    print(f"pod: {pod_id} ({args.gpu}, {args.cloud} cloud, host CUDA {', '.join(args.cuda_versions)})")
    if not args.no_wait:
        wait_running(runpod.get_pod, pod_id, args.wait_s, args.poll_s)
        print(f"pod {pod_id} is running; the page needs a few minutes on first start (install, model downloads)")
    for url in proxy_urls(pod_id, template["ports"]):
        print(f"  {url}")
    print("password: VOICEKIT_PASSWORD, or the generated one printed once in the pod log")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.api_url:
        os.environ["RUNPOD_API_BASE_URL"] = args.api_url.rstrip("/")
    api_url = os.environ.get("RUNPOD_API_BASE_URL", DEFAULT_API_URL)
    template = load_template()
    try:
        git = git_source(args, os.environ, template, required=not args.dry_run)
        env = pod_env(os.environ, template, git)
        if args.dry_run:
            return dry_run(args, template, env, git, api_url)
        key = os.environ.get("RUNPOD_API_KEY", "").strip()
        if not key:
            raise DeployError("RUNPOD_API_KEY is not set: create a key at https://www.runpod.io/console/user/settings")
        from requests import RequestException

        from runpod import error as runpod_error

        try:
            return deploy(args, template, env, git, key)
        except runpod_error.AuthenticationError:
            raise DeployError("RunPod rejected the API key (unauthorized): check RUNPOD_API_KEY") from None
        except runpod_error.QueryError as failure:
            text = str(failure)
            if re.search(r"unauthori[sz]ed|api key", text, re.IGNORECASE):
                raise DeployError("RunPod rejected the API key (unauthorized): check RUNPOD_API_KEY") from None
            raise DeployError(f"RunPod API error: {text}") from None
        except RequestException as failure:
            raise DeployError(f"cannot reach the RunPod API at {api_url}: {type(failure).__name__}") from None
    except DeployError as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
