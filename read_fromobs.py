"""Copy a folder between OBS (obs://bucket/prefix) and local disk, resuming where a killed copy stopped.

Command: python read_fromobs.py --src=obs://bucket/data --dst=/cache/data   (or local -> obs://, local -> local)
Module:  copy_tree(src, dst) for either direction; sync_up(local_dir, remote_url) for training outputs.
"""

import collections
import functools
import http.client
import os
import re
import shutil
import socket
import ssl

from absl import app
from absl import flags
from absl import logging

from libml.utils import UserError, atomic_output, cli_main, file_md5

FLAGS = flags.FLAGS
OBS_SCHEME = 'obs://'
ENV_ENDPOINT, ENV_KEY_ID, ENV_SECRET = 'OBS_ENDPOINT', 'OBS_ACCESS_KEY_ID', 'OBS_SECRET_ACCESS_KEY'
ENV_SIGNATURE = 'OBS_SIGNATURE'  # optional: obs, v2 or v4 (the SDK picks one when unset)
SDK_TIMEOUT_S = 5  # per socket operation: a dead endpoint fails in seconds, not minutes
SDK_RETRIES = 1
PAGE_SIZE = 1000  # the most objects OBS returns per listing
WRONG_KEY_CODES = ('InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidSecurity')
TEMP_NAME = re.compile(r'^\.(.+)\.tmp-(\d+)$')  # the names libml.utils.atomic_output writes through
# What the SDK raises when the endpoint does not answer (socket.timeout is not a ConnectionError).
NETWORK_ERRORS = (ConnectionError, socket.timeout, socket.gaierror, ssl.SSLError, http.client.HTTPException)

# One file of a listing: its size and a function giving its MD5 hex digest (None when unknown).
Entry = collections.namedtuple('Entry', 'size md5')
CopyStats = collections.namedtuple('CopyStats', 'copied skipped bytes')


def is_obs_url(path):
    """Whether `path` names an OBS location rather than a local one."""
    return path.startswith(OBS_SCHEME)


def split_obs_url(url):
    """obs://bucket/a/b/ -> ('bucket', 'a/b')."""
    bucket, _, prefix = url[len(OBS_SCHEME):].partition('/')
    if not bucket:
        raise UserError('%r names no bucket: write obs://BUCKET/FOLDER' % url)
    return bucket, prefix.strip('/')


def copy_tree(src, dst, compare_content=False):
    """Copy every file under folder `src` to folder `dst` (local paths or obs:// URLs).

    Skips files the destination holds with the same size (and MD5, with compare_content). Returns
    CopyStats, or None when moxing did the copy.
    """
    if is_obs_url(src) and is_obs_url(dst):
        raise UserError('both %s and %s are obs:// paths: one side must be a local folder' % (src, dst))
    if not is_obs_url(src):
        _check_local_source(src, dst)
    if not is_obs_url(dst) and os.path.exists(dst) and not os.path.isdir(dst):
        raise UserError('destination %s is a file, not a folder: check --dst' % dst)
    moxing = _import_moxing() if is_obs_url(src) or is_obs_url(dst) else None
    if moxing is not None:
        return _copy_with_moxing(moxing, src, dst)
    if is_obs_url(src):
        with ObsFolder.open(src) as folder:
            return _copy_into_local(folder.files(must_exist=True), folder.download, src, dst, compare_content)
    if is_obs_url(dst):
        with ObsFolder.open(dst) as folder:
            def upload(rel, _):
                folder.upload(_local_path(src, rel), rel)
            return _copy_missing(local_files(src), folder.files(), upload, src, dst, compare_content)

    def copy_file(rel, tmp):
        shutil.copyfile(_local_path(src, rel), tmp)
    return _copy_into_local(local_files(src), copy_file, src, dst, compare_content)


def sync_up(local_dir, remote_url):
    """Upload the new and changed files of `local_dir` to `remote_url` (obs:// or local); safe to call often."""
    if is_obs_url(local_dir):
        raise UserError('sync_up uploads a local folder, got %s' % local_dir)
    moxing = _import_moxing() if is_obs_url(remote_url) else None
    if moxing is not None:
        return _sync_with_moxing(moxing, local_dir, remote_url)
    return copy_tree(local_dir, remote_url, compare_content=True)


# (remote folder, relative path) -> (size, mtime) of what this process last uploaded through moxing.
_MOXING_UPLOADED = {}


def _sync_with_moxing(moxing, local_dir, remote_url):
    """Upload only files changed since this process last synced them (moxing has no cheap listing),
    so a job's repeated syncs do not re-send every kept checkpoint."""
    copied = nbytes = 0
    for rel in sorted(local_files(local_dir)):
        path = _local_path(local_dir, rel)
        stamp = (os.path.getsize(path), os.path.getmtime(path))
        key = (remote_url.rstrip('/'), rel)
        if _MOXING_UPLOADED.get(key) == stamp:
            continue
        try:
            moxing.file.copy(path, remote_url.rstrip('/') + '/' + rel)
        except Exception as e:  # moxing's exception types are not documented
            raise UserError('moxing could not copy %s to %s (%s: %s)' % (path, remote_url, type(e).__name__, e))
        _MOXING_UPLOADED[key] = stamp
        copied, nbytes = copied + 1, nbytes + stamp[0]
    return CopyStats(copied, len(_MOXING_UPLOADED) - copied, nbytes)


def _check_local_source(src, dst):
    if not os.path.isdir(src):
        raise UserError('source folder %s does not exist (or is not a folder): check --src' % src)
    inside = os.path.join(os.path.realpath(src), '')
    if not is_obs_url(dst) and os.path.join(os.path.realpath(dst), '').startswith(inside):
        raise UserError('destination %s lies inside source %s: pick a folder outside it' % (dst, src))


def _import_moxing():
    """ModelArts' own OBS library, or None off ModelArts (it is not on PyPI under that name)."""
    try:
        import moxing  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return moxing


def _copy_with_moxing(moxing, src, dst):
    """Let moxing copy in parallel; it handles credentials on ModelArts."""
    logging.info('copying %s -> %s with moxing', src, dst)
    try:
        moxing.file.copy_parallel(src, dst)
    except Exception as e:  # moxing's exception types are not documented
        raise UserError('moxing could not copy %s to %s (%s: %s)' % (src, dst, type(e).__name__, e))
    return None


# ---- local side ----

def _local_path(root, rel):
    return os.path.join(root, *rel.split('/'))


def local_files(root):
    """{relative/path: Entry} for the files under `root`, leaving out temporary files of unfinished writes."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if TEMP_NAME.match(name) or not os.path.isfile(path):
                continue
            rel = os.path.relpath(path, root).replace(os.sep, '/')
            files[rel] = Entry(os.path.getsize(path), functools.partial(file_md5, path))
    return files


def _pid_alive(pid):
    if pid == os.getpid():
        return False  # a recycled pid: this process has not started writing yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(root):
    """Delete temporary files left by copies that were killed, so a rerun leaves a clean folder."""
    for folder, _, names in os.walk(root):
        for name in names:
            match = TEMP_NAME.match(name)
            if match and not _pid_alive(int(match.group(2))):
                os.remove(os.path.join(folder, name))


def _copy_into_local(src_files, write, src, dst, compare_content):
    """Copy into local folder `dst`: write(rel, tmp) fills a temporary file, renamed once its size is right."""
    if os.path.isdir(dst):
        _remove_stale_temps(dst)

    def copy_one(rel, size):
        path = _local_path(dst, rel)
        with atomic_output(path) as tmp:
            write(rel, tmp)
            got = os.path.getsize(tmp) if os.path.exists(tmp) else 0
            if got != size:
                raise UserError('%s arrived with %d of %d bytes: rerun to fetch it again' % (rel, got, size))

    dst_files = local_files(dst) if os.path.isdir(dst) else {}
    return _copy_missing(src_files, dst_files, copy_one, src, dst, compare_content)


# ---- copy plan ----

def _same_file(a, b, compare_content):
    if a.size != b.size:
        return False
    if not compare_content:
        return True
    digest_a, digest_b = a.md5(), b.md5()
    return digest_a is None or digest_b is None or digest_a == digest_b


def _copy_missing(src_files, dst_files, copy_one, src, dst, compare_content):
    """Call copy_one(rel, size) for each source file the destination lacks; log and return CopyStats."""
    todo = [rel for rel in sorted(src_files)
            if rel not in dst_files or not _same_file(src_files[rel], dst_files[rel], compare_content)]
    total = sum(src_files[rel].size for rel in todo)
    logging.info('%s -> %s: %d files to copy (%s), %d already there', src, dst, len(todo),
                 _human_bytes(total), len(src_files) - len(todo))
    for rel in todo:
        logging.vlog(1, 'copying %s (%d bytes)', rel, src_files[rel].size)
        try:
            copy_one(rel, src_files[rel].size)
        except OSError as e:  # local disk trouble: full, read-only, a file where a folder should be
            raise UserError('copying %s to %s failed: %s' % (rel, dst, e))
    if todo:
        logging.info('%s -> %s: copied %d files (%s)', src, dst, len(todo), _human_bytes(total))
    return CopyStats(len(todo), len(src_files) - len(todo), total)


def _human_bytes(n):
    if n < 1024:
        return '%d B' % n
    for unit in ('KB', 'MB', 'GB'):
        n /= 1024.0
        if n < 1024 or unit == 'GB':
            return '%.1f %s' % (n, unit)
    return ''


# ---- OBS side, through the esdk-obs-python SDK ----

def _env_credentials():
    missing = [name for name in (ENV_ENDPOINT, ENV_KEY_ID, ENV_SECRET) if not os.environ.get(name)]
    if missing:
        raise UserError('%s not set: export %s, %s and %s to reach OBS outside ModelArts'
                        % (', '.join(missing), ENV_ENDPOINT, ENV_KEY_ID, ENV_SECRET))
    signature = os.environ.get(ENV_SIGNATURE)
    if signature and signature not in ('obs', 'v2', 'v4'):
        raise UserError('%s=%s: use obs, v2 or v4' % (ENV_SIGNATURE, signature))
    return os.environ[ENV_ENDPOINT], os.environ[ENV_KEY_ID], os.environ[ENV_SECRET], signature


def _obs_client(endpoint, key_id, secret, signature):
    try:
        from obs import ObsClient  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise UserError('the OBS SDK is missing: pip install esdk-obs-python (on ModelArts moxing is used)')
    options = {'signature': signature} if signature else {}
    return ObsClient(access_key_id=key_id, secret_access_key=secret, server=endpoint,
                     max_retry_count=SDK_RETRIES, timeout=SDK_TIMEOUT_S, **options)


class ObsFolder(object):
    """The objects under one obs://bucket/prefix, listed, fetched and stored through the SDK."""

    def __init__(self, client, url, endpoint, secrets):
        self.client = client
        self.url = url
        self.bucket, prefix = split_obs_url(url)
        self.key_prefix = prefix + '/' if prefix else ''
        self.endpoint = endpoint
        self._secrets = [s for s in secrets if s]

    @classmethod
    def open(cls, url):
        """Connect with the endpoint and keys from the environment."""
        endpoint, key_id, secret, signature = _env_credentials()
        return cls(_obs_client(endpoint, key_id, secret, signature), url, endpoint, (key_id, secret))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.client.close()

    def files(self, must_exist=False, page_size=PAGE_SIZE):
        """{relative/path: Entry} for the objects under the prefix, page by page."""
        files, marker = {}, None
        while True:
            body = self._call('listing ' + self.url, self.client.listObjects, self.bucket,
                              prefix=self.key_prefix, marker=marker, max_keys=page_size).body
            for item in body.contents or []:
                if not item.key.endswith('/'):  # zero-byte "folder" markers made by OBS consoles
                    files[self._relative(item.key)] = Entry(item.size, functools.partial(_etag_md5, item.etag))
            if not body.is_truncated or not body.contents:
                break
            marker = body.next_marker or body.contents[-1].key
        if must_exist and not files:
            raise UserError('no objects under %s/: check the path (bucket %s exists)' % (self.url.rstrip('/'),
                                                                                       self.bucket))
        return files

    def download(self, rel, path):
        """Write object `rel` to local file `path`."""
        self._call('fetching ' + rel, self.client.getObject, self.bucket, self.key_prefix + rel, downloadPath=path)

    def upload(self, path, rel):
        """Store local file `path` as object `rel` (an object appears whole or not at all)."""
        self._call('storing ' + rel, self.client.putFile, self.bucket, self.key_prefix + rel, path)

    def _relative(self, key):
        rel = key[len(self.key_prefix):]
        if any(part in ('', '.', '..') for part in rel.split('/')):
            raise UserError('object key %r cannot become a local file name: rename it in the bucket' % key)
        return rel

    def _call(self, what, method, *args, **kwargs):
        """Run one SDK request; any failure becomes a one-line UserError that names no key."""
        try:
            resp = method(*args, **kwargs)
        except NETWORK_ERRORS as e:
            raise UserError(self._scrub('cannot reach OBS endpoint %s while %s (%s: %s): check %s and the network'
                                        % (self.endpoint, what, type(e).__name__, e, ENV_ENDPOINT)))
        if resp.status >= 300:
            raise UserError(self._scrub(self._explain(resp, what)))
        return resp

    def _explain(self, resp, what):
        code = resp.errorCode
        if code in WRONG_KEY_CODES:
            return 'OBS at %s rejected the access keys (%s) while %s: check %s and %s' % (
                self.endpoint, code, what, ENV_KEY_ID, ENV_SECRET)
        if code == 'NoSuchBucket':
            return 'bucket %s does not exist at %s: check the obs:// path and %s' % (
                self.bucket, self.endpoint, ENV_ENDPOINT)
        if code == 'AccessDenied':
            return 'OBS denied access to bucket %s while %s: the keys lack permission for it' % (self.bucket, what)
        return 'OBS at %s answered HTTP %s %s while %s%s' % (
            self.endpoint, resp.status, code or '(no error code)', what,
            ': ' + resp.errorMessage if resp.errorMessage else '')

    def _scrub(self, text):
        for secret in self._secrets:
            text = text.replace(secret, '***')
        return text


def _etag_md5(etag):
    """An object's MD5 from its ETag; None for multipart uploads, whose ETag is not an MD5."""
    digest = (etag or '').strip('"').lower()
    return digest if re.match(r'^[0-9a-f]{32}$', digest) else None


# ---- command line ----

def _define_flags():
    flags.DEFINE_string('src', None, 'folder to copy: obs://bucket/prefix or a local path')
    flags.DEFINE_string('dst', None, 'where the copy goes: a local path, or obs://bucket/prefix for uploads')


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments %s: pass only --src and --dst' % ' '.join(argv[1:]))
    if not FLAGS.src or not FLAGS.dst:
        raise UserError('--src and --dst are both required, e.g. --src=obs://bucket/data --dst=/cache/data')
    copy_tree(FLAGS.src, FLAGS.dst)


if __name__ == '__main__':
    _define_flags()
    app.run(cli_main(main))
