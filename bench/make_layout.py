#!/usr/bin/env python3
"""Write an OCI image layout from existing layer tar files (uncompressed).

    make_layout.py LAYOUT_DIR TAG LAYER.tar [LAYER.tar ...]

umoci always gzips the layers it writes; the import benchmark needs plain tar
layers, so it assembles the layout itself: blobs are hard-linked (or copied)
into blobs/sha256/ under their digests, then the config, the manifest and the
index are written.
"""
import hashlib, json, os, shutil, sys


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def put_blob(layout, data=None, path=None):
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    if data is not None:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return digest, len(data)
    digest = sha256_file(path)
    dest = os.path.join(blobs, digest)
    if not os.path.exists(dest):
        try:
            os.link(path, dest)
        except OSError:
            shutil.copyfile(path, dest)
    return digest, os.path.getsize(path)


def make_layout(layout, tag, layers, image_config=None):
    """Write LAYOUT (created if missing) holding one image tagged TAG whose
    layers are the plain tar files LAYERS, bottom first; IMAGE_CONFIG is the
    config's "config" object (Entrypoint, Env, WorkingDir...)."""
    os.makedirs(layout, exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    descs, diff_ids = [], []
    for path in layers:
        digest, size = put_blob(layout, path=path)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                      "digest": "sha256:" + digest, "size": size})
        diff_ids.append("sha256:" + digest)
    config = {"architecture": "amd64", "os": "linux",
              "config": image_config or {"Entrypoint": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"],
                                         "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cdigest, csize = put_blob(layout, data=json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": "sha256:" + cdigest, "size": csize},
                "layers": descs}
    mdigest, msize = put_blob(layout, data=json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": "sha256:" + mdigest, "size": msize,
                            "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)


def main():
    make_layout(sys.argv[1], sys.argv[2], sys.argv[3:])


if __name__ == "__main__":
    main()
