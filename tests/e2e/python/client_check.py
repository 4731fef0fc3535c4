"""The Python `kubernetes` client against a pikube server: list, create, conflicts,
patch, watch from a resourceVersion, delete. Exits non-zero with a message on any
difference from kube-apiserver's behaviour."""

import sys

from kubernetes import client, config, watch


def expect_status(fn, status):
    try:
        fn()
    except client.ApiException as e:
        if e.status != status:
            sys.exit(f"expected HTTP {status}, got {e.status}: {e.body}")
        return
    sys.exit(f"expected HTTP {status}, the call succeeded")


def main():
    config.load_kube_config(config_file=sys.argv[1])
    v1 = client.CoreV1Api()
    names = [n.metadata.name for n in v1.list_namespace().items]
    if "kube-system" not in names:
        sys.exit(f"kube-system missing from {names}")

    cm = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}), data={"k": "1"}
    )
    created = v1.create_namespaced_config_map("default", cm)
    expect_status(lambda: v1.create_namespaced_config_map("default", cm), 409)
    v1.patch_namespaced_config_map("py", "default", {"data": {"k": "2"}})
    got = v1.read_namespaced_config_map("py", "default")
    if got.data != {"k": "2"}:
        sys.exit(f"patch not applied: {got.data}")
    stale = created
    stale.data = {"k": "3"}
    expect_status(lambda: v1.replace_namespaced_config_map("py", "default", stale), 409)

    events = []
    for ev in watch.Watch().stream(
        v1.list_namespaced_config_map,
        "default",
        label_selector="from=python",
        resource_version=created.metadata.resource_version,
        timeout_seconds=2,
    ):
        events.append((ev["type"], ev["object"].data.get("k")))
    if events != [("MODIFIED", "2")]:
        sys.exit(f"unexpected watch events: {events}")

    answer = v1.delete_namespaced_config_map("py", "default")
    answer = answer if isinstance(answer, dict) else answer.to_dict()
    if answer.get("kind") != "Status" or answer.get("status") != "Success":
        sys.exit(f"unexpected delete answer: {answer}")
    expect_status(lambda: v1.read_namespaced_config_map("py", "default"), 404)
    print("python client: ok")


if __name__ == "__main__":
    main()
