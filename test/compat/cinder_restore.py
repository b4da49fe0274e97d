#!/usr/bin/env python3
"""An independent Cinder chunked-backup (posix layout, driver 1.0.0) reader and writer, written from
/work/shared/reference/repository-format.md and Cinder's chunkeddriver algorithm, with nothing from fleece.

  restore ROOT BACKUP_ID OUT SIZE   restore the chain ending at BACKUP_ID into a new file OUT of SIZE bytes,
                                    then check it against the final _sha256file
  write ROOT INPUT VOLUME_ID BACKUP_ID [--parent ID] [--compression zlib|bz2|none] [--chunk-size N] [--sha-block-size N]
                                    back INPUT up as Cinder does (incrementals by comparing sha256s with the parent)
  canon FILE                        print json.dumps(json.load(FILE), sort_keys=True, indent=2)
  restore-s3 ENDPOINT BUCKET BACKUP_ID OUT SIZE
                                    the same from a bucket laid out as Cinder's S3 driver lays it out (keys
                                    volume_<id>/<YYYYmmddHHMMSS>/az_<az>_backup_<id>-00001, ..._metadata,
                                    ..._sha256file), with boto3 (Debian's python3-boto3; AWS_ACCESS_KEY_ID,
                                    AWS_SECRET_ACCESS_KEY from the environment), path-style addressing
"""
import argparse, bz2, datetime, hashlib, json, os, subprocess, sys, zlib


def container_of(root, backup_id):
    return os.path.join(root, backup_id[0:2], backup_id[2:4], backup_id)


def find_metadata(root, backup_id):
    container = container_of(root, backup_id)
    if not os.path.isdir(container):
        raise SystemExit('backup %s: no container %s' % (backup_id, container))
    names = [n for n in os.listdir(container) if n.endswith('_backup_%s_metadata' % backup_id)]
    if len(names) != 1:
        raise SystemExit('backup %s: %d metadata objects' % (backup_id, len(names)))
    with open(os.path.join(container, names[0]), 'rb') as f:
        meta = json.loads(f.read().decode('utf-8'))
    return container, names[0][:-len('_metadata')], meta


def decompress(algorithm, data):
    if algorithm in (None, 'none'):
        return data
    if algorithm == 'zlib':
        return zlib.decompress(data)
    if algorithm == 'bz2':
        return bz2.decompress(data)
    if algorithm == 'zstd':  # python3 has no zstd module: use the CLI
        return subprocess.run(['zstd', '-d', '-c', '-q'], input=data, stdout=subprocess.PIPE, check=True).stdout
    raise SystemExit('unknown compression %r' % algorithm)


def restore(root, backup_id, out, size):
    chain = []
    current = backup_id
    while current is not None:
        container, prefix, meta = find_metadata(root, current)
        chain.append((container, prefix, meta))
        current = meta.get('parent_id')
    chain.reverse()
    with open(out, 'wb') as volume_file:
        volume_file.truncate(size)
        for container, prefix, meta in chain:
            if meta['version'] != '1.0.0':
                raise SystemExit('unsupported version %s' % meta['version'])
            names = []
            for obj in meta['objects']:
                names.extend(obj.keys())
            container_list = [n for n in os.listdir(container) if n.startswith(prefix) and not n.startswith('.')]
            for item in (prefix + '_metadata', prefix + '_sha256file'):
                if item in container_list:
                    container_list.remove(item)
            if sorted(container_list) != sorted(names):
                raise SystemExit('backup %s: container objects %s differ from the manifest %s' % (meta['backup_id'], sorted(container_list), sorted(names)))
            for obj in meta['objects']:
                name = list(obj.keys())[0]
                info = obj[name]
                with open(os.path.join(container, name), 'rb') as f:
                    data = decompress(info.get('compression'), f.read())
                if hashlib.md5(data).hexdigest() != info['md5']:
                    raise SystemExit('object %s: md5 mismatch' % name)
                volume_file.seek(info['offset'])
                volume_file.write(data)
    container, prefix, meta = chain[-1]
    with open(os.path.join(container, prefix + '_sha256file')) as f:
        shafile = json.load(f)
    bs = shafile['chunk_size']
    with open(out, 'rb') as f:
        for i, want in enumerate(shafile['sha256s']):
            got = hashlib.sha256(f.read(bs)).hexdigest()
            if got != want:
                raise SystemExit('restored block %d does not match the sha256file' % i)
    print('restored %s (%d backups)' % (backup_id, len(chain)))


def s3_client(endpoint):
    import boto3
    from botocore.config import Config
    return boto3.client('s3', endpoint_url=endpoint, region_name=os.environ.get('AWS_REGION', 'us-east-1'),
                        config=Config(s3={'addressing_style': 'path'}, signature_version='s3v4'))


def s3_keys(client, bucket, prefix):
    """Cinder's S3 driver get_container_entries: every key of the bucket that starts with prefix."""
    keys = []
    for page in client.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o['Key'] for o in page.get('Contents', []))
    return keys


def s3_read(client, bucket, key):
    return client.get_object(Bucket=bucket, Key=key)['Body'].read()


def s3_find_metadata(client, bucket, backup_id):
    # Cinder keeps the prefix in the backup record (service_metadata); without one, find it by its _metadata key.
    names = [k for k in s3_keys(client, bucket, 'volume_') if k.endswith('_backup_%s_metadata' % backup_id)]
    if len(names) != 1:
        raise SystemExit('backup %s: %d metadata objects in bucket %s' % (backup_id, len(names), bucket))
    return names[0][:-len('_metadata')], json.loads(s3_read(client, bucket, names[0]).decode('utf-8'))


def restore_s3(endpoint, bucket, backup_id, out, size):
    client = s3_client(endpoint)
    chain = []
    current = backup_id
    while current is not None:
        prefix, meta = s3_find_metadata(client, bucket, current)
        chain.append((prefix, meta))
        current = meta.get('parent_id')
    chain.reverse()
    with open(out, 'wb') as volume_file:
        volume_file.truncate(size)
        for prefix, meta in chain:
            if meta['version'] != '1.0.0':
                raise SystemExit('unsupported version %s' % meta['version'])
            names = []
            for obj in meta['objects']:
                names.extend(obj.keys())
            container_list = s3_keys(client, bucket, prefix)
            for item in (prefix + '_metadata', prefix + '_sha256file'):
                if item in container_list:
                    container_list.remove(item)
            if sorted(container_list) != sorted(names):
                raise SystemExit('backup %s: bucket objects %s differ from the manifest %s' % (meta['backup_id'], sorted(container_list), sorted(names)))
            for obj in meta['objects']:
                name = list(obj.keys())[0]
                info = obj[name]
                data = decompress(info.get('compression'), s3_read(client, bucket, name))
                if hashlib.md5(data).hexdigest() != info['md5']:
                    raise SystemExit('object %s: md5 mismatch' % name)
                volume_file.seek(info['offset'])
                volume_file.write(data)
    prefix, meta = chain[-1]
    shafile = json.loads(s3_read(client, bucket, prefix + '_sha256file').decode('utf-8'))
    bs = shafile['chunk_size']
    with open(out, 'rb') as f:
        for i, want in enumerate(shafile['sha256s']):
            got = hashlib.sha256(f.read(bs)).hexdigest()
            if got != want:
                raise SystemExit('restored block %d does not match the sha256file' % i)
    print('restored %s (%d backups) from s3://%s' % (backup_id, len(chain), bucket))


def compress(algorithm, data):
    if algorithm == 'zlib':
        packed = zlib.compress(data)
    elif algorithm == 'bz2':
        packed = bz2.compress(data)
    else:
        return 'none', data
    if len(packed) < len(data):
        return algorithm, packed
    return 'none', data


def write(root, input_path, volume_id, backup_id, parent_id, algorithm, chunk_size, sha_block):
    parent_shas = None
    if parent_id:
        pcontainer, pprefix, _ = find_metadata(root, parent_id)
        with open(os.path.join(pcontainer, pprefix + '_sha256file')) as f:
            parent_file = json.load(f)
        if parent_file['chunk_size'] != sha_block:
            raise SystemExit('sha block size differs from the parent')
        parent_shas = parent_file['sha256s']
    now = datetime.datetime.utcnow()
    prefix = 'volume_%s_%s_backup_%s' % (volume_id, now.strftime('%Y%m%d%H%M%S'), backup_id)
    container = container_of(root, backup_id)
    os.makedirs(container, exist_ok=True)
    objects, sha256s, object_id = [], [], 1

    def put(name, data):
        with open(os.path.join(container, name), 'wb') as f:
            f.write(data)

    def write_object(offset, data):
        nonlocal object_id
        name = '%s-%05d' % (prefix, object_id)
        comp, packed = compress(algorithm, data)
        put(name, packed)
        objects.append({name: {'compression': comp, 'length': len(data), 'md5': hashlib.md5(data).hexdigest(), 'offset': offset}})
        object_id += 1

    with open(input_path, 'rb') as f:
        offset = 0
        while True:
            data = f.read(chunk_size)
            if not data:
                break
            shas = [hashlib.sha256(data[i:i + sha_block]).hexdigest() for i in range(0, len(data), sha_block)]
            first = len(sha256s)
            sha256s.extend(shas)
            if parent_shas is None:
                write_object(offset, data)
            else:  # Cinder: store each run of blocks whose sha256 changed since the parent
                i = 0
                while i < len(shas):
                    if first + i < len(parent_shas) and parent_shas[first + i] == shas[i]:
                        i += 1
                        continue
                    start = i
                    while i < len(shas) and not (first + i < len(parent_shas) and parent_shas[first + i] == shas[i]):
                        i += 1
                    write_object(offset + start * sha_block, data[start * sha_block:i * sha_block])
            offset += len(data)
    created = str(now)
    common = {'backup_description': None, 'backup_id': backup_id, 'backup_name': None, 'created_at': created,
              'volume_id': volume_id, 'version': '1.0.0'}
    put(prefix + '_sha256file', json.dumps(dict(common, chunk_size=sha_block, sha256s=sha256s), sort_keys=True, indent=2).encode('utf-8'))
    meta = dict(common, objects=objects, parent_id=parent_id, volume_meta=None)
    put(prefix + '_metadata', json.dumps(meta, sort_keys=True, indent=2).encode('utf-8'))
    print('wrote %s with %d objects' % (backup_id, len(objects)))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest='cmd', required=True)
    r = sub.add_parser('restore')
    r.add_argument('root'); r.add_argument('backup_id'); r.add_argument('out'); r.add_argument('size', type=int)
    w = sub.add_parser('write')
    w.add_argument('root'); w.add_argument('input'); w.add_argument('volume_id'); w.add_argument('backup_id')
    w.add_argument('--parent'); w.add_argument('--compression', default='zlib')
    w.add_argument('--chunk-size', type=int, default=1024 * 1024); w.add_argument('--sha-block-size', type=int, default=32768)
    c = sub.add_parser('canon')
    c.add_argument('file')
    s3 = sub.add_parser('restore-s3')
    s3.add_argument('endpoint'); s3.add_argument('bucket'); s3.add_argument('backup_id'); s3.add_argument('out'); s3.add_argument('size', type=int)
    a = p.parse_args()
    if a.cmd == 'restore':
        restore(a.root, a.backup_id, a.out, a.size)
    elif a.cmd == 'restore-s3':
        restore_s3(a.endpoint, a.bucket, a.backup_id, a.out, a.size)
    elif a.cmd == 'write':
        write(a.root, a.input, a.volume_id, a.backup_id, a.parent, a.compression, a.chunk_size, a.sha_block_size)
    else:
        with open(a.file, 'rb') as f:
            sys.stdout.write(json.dumps(json.loads(f.read().decode('utf-8')), sort_keys=True, indent=2))


if __name__ == '__main__':
    main()
