"""Create (or reuse) the voicekit RunPod template and start a pod from it, with the `runpod` SDK.

    export RUNPOD_API_KEY=...   # https://www.runpod.io/console/user/settings; never printed
    export HF_TOKEN=...         # passed to the pod (the gpu preset's models are gated); never printed
    python runpod/deploy.py --dry-run                   # show the exact GraphQL requests, secrets masked
    python runpod/deploy.py --gpu "NVIDIA GeForce RTX 4090" --cloud SECURE --volume-gb 50
    python runpod/deploy.py --template-only             # just the template and its one-click deploy link

The template's fields come from runpod/template.json. The SDK posts to `$RUNPOD_API_BASE_URL/graphql`
(default https://api.runpod.io); `--api-url` sets that variable, e.g. for a local stand-in in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
TEMPLATES_QUERY = "query { myself { podTemplates { id name imageName } } }"


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
    parser.add_argument("--image", default=template["imageName"], help="container image (default from template.json)")
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
    return args


def _check_value(key: str, value: str) -> str:
    # The SDK writes values into the GraphQL text without escaping them.
    if re.search(r'["\\\n\r]', value):
        raise DeployError(f"{key} contains a quote, backslash or newline, which the RunPod SDK cannot send")
    return value


def template_fields(args: argparse.Namespace, template: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of runpod.create_template (no secret values: the template may be shared)."""
    env = {item["key"]: _check_value(item["key"], item.get("value", "")) for item in template["env"]}
    return {
        "name": args.template_name, "image_name": args.image, "docker_start_cmd": template["dockerStartCmd"],
        "container_disk_in_gb": args.container_disk_gb, "volume_in_gb": args.volume_gb,
        "volume_mount_path": template["volumeMountPath"], "ports": template["ports"], "env": env,
    }


def pod_env(environ: Mapping[str, str], template: Mapping[str, Any]) -> dict[str, str]:
    """The template's variables, overridden by those set in this shell (secrets: the template leaves them empty)."""
    env = {item["key"]: _check_value(item["key"], item.get("value", "")) for item in template["env"]}
    env.update({key: _check_value(key, environ[key]) for key in PASSED_ENV if environ.get(key)})
    return env


def pod_fields(args: argparse.Namespace, template: Mapping[str, Any], template_id: str,
               env: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of runpod.create_pod."""
    return {
        "name": args.name, "image_name": args.image, "gpu_type_id": args.gpu, "cloud_type": args.cloud,
        "volume_in_gb": args.volume_gb, "container_disk_in_gb": args.container_disk_gb,
        "volume_mount_path": template["volumeMountPath"], "ports": template["ports"], "env": dict(env),
        "template_id": template_id, "docker_args": template["dockerStartCmd"], "support_public_ip": True,
    }


def masked(env: Mapping[str, str]) -> dict[str, str]:
    return {key: (MASK if key in SECRET_ENV and value else value) for key, value in env.items()}


def proxy_urls(pod_id: str, ports: str) -> list[str]:
    """`https://{POD_ID}-{PORT}.proxy.runpod.net` for each HTTP port ("7860/http,8888/http")."""
    http_ports = [item.split("/")[0] for item in ports.split(",") if item.strip().endswith("/http")]
    return [f"https://{pod_id}-{port}.proxy.runpod.net" for port in http_ports]


def deploy_link(template_id: str) -> str:
    return f"https://console.runpod.io/deploy?template={template_id}"


def dry_run(args: argparse.Namespace, template: Mapping[str, Any], env: Mapping[str, str], api_url: str) -> int:
    """Print the GraphQL requests the SDK would send (API key and secrets masked); send nothing."""
    from runpod.api.mutations.pods import generate_pod_deployment_mutation
    from runpod.api.mutations.templates import generate_pod_template

    key = os.environ.get("RUNPOD_API_KEY", "")
    print(f"dry run: nothing is sent. POST {api_url}/graphql")
    print(f"Authorization: Bearer {MASK if key else '(RUNPOD_API_KEY is not set)'}")
    print(f"# 1. find a template named {args.template_name!r}:\n{TEMPLATES_QUERY}")
    print("# 2. if there is none, create it:")
    print(generate_pod_template(**template_fields(args, template)))
    if args.template_only:
        return 0
    fields = pod_fields(args, template, "<TEMPLATE_ID>", masked(env))
    print(f"# 3. check the GPU type {args.gpu!r} exists (gpuTypes query), then start the pod:")
    print(generate_pod_deployment_mutation(
        fields["name"], fields["image_name"], fields["gpu_type_id"], fields["cloud_type"],
        fields["support_public_ip"], True, None, None, 1, fields["volume_in_gb"], fields["container_disk_in_gb"],
        1, 1, fields["docker_args"], fields["ports"], fields["volume_mount_path"], fields["env"],
        fields["template_id"]))
    print("pod env: " + json.dumps(masked(env), sort_keys=True))
    return 0


def find_or_create_template(runpod: Any, args: argparse.Namespace, template: Mapping[str, Any]) -> str:
    from runpod.api.graphql import run_graphql_query

    answer = run_graphql_query(TEMPLATES_QUERY)
    for item in ((answer.get("data") or {}).get("myself") or {}).get("podTemplates") or []:
        if item.get("name") == args.template_name:
            print(f"template: reusing {item['id']} ({args.template_name})")
            if item.get("imageName") != args.image:
                print(f"  note: it uses the image {item.get('imageName')}, the pod uses {args.image}")
            return str(item["id"])
    created = runpod.create_template(**template_fields(args, template))
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


def deploy(args: argparse.Namespace, template: Mapping[str, Any], env: Mapping[str, str], key: str) -> int:
    import runpod

    runpod.api_key = key
    template_id = find_or_create_template(runpod, args, template)
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
    print(f"pod: {pod_id} ({args.gpu}, {args.cloud} cloud)")
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
        env = pod_env(os.environ, template)
        if args.dry_run:
            return dry_run(args, template, env, api_url)
        key = os.environ.get("RUNPOD_API_KEY", "").strip()
        if not key:
            raise DeployError("RUNPOD_API_KEY is not set: create a key at https://www.runpod.io/console/user/settings")
        from requests import RequestException

        from runpod import error as runpod_error

        try:
            return deploy(args, template, env, key)
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
