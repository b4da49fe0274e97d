// `s3://BUCKET[/PREFIX]`: where an S3 repository lives (pure parsing, no I/O).
import { InvalidInputError } from '../../util/errors.js';

/** A bucket and a key prefix inside it ('' or without leading and trailing '/'). */
export interface S3Location {
  bucket: string;
  /** '' for the whole bucket, else e.g. `fleece/prod` (objects are keyed `fleece/prod/<container>/<name>`). */
  prefix: string;
}

const SCHEME = 's3://';
// S3's bucket rules (3–63 characters, lower case letters, digits, '.', '-', starting and ending with a letter or
// digit); '_' and upper case are accepted too because some non-AWS servers (Swift, Ceph) allow them.
const BUCKET = /^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$/;

/** Whether `text` names an S3 repository (starts with `s3://`, in any case). */
export function isS3Location(text: string): boolean {
  return text.slice(0, SCHEME.length).toLowerCase() === SCHEME;
}

/**
 * Parses `s3://bucket`, `s3://bucket/`, `s3://bucket/a/b/`. Throws InvalidInputError naming what is wrong (no bucket,
 * a bucket name S3 refuses, '.', '..' or empty segments in the prefix, a query or fragment).
 */
export function parseS3Location(text: string): S3Location {
  if (!isS3Location(text)) throw new InvalidInputError(`"${text}" is not an s3:// location`, { hint: 'write s3://BUCKET or s3://BUCKET/PREFIX' });
  const rest = text.slice(SCHEME.length);
  if (/[?#\\\0]/.test(rest)) {
    throw new InvalidInputError(`"${text}" holds a character an S3 repository location may not (?, #, \\)`, { hint: 'write s3://BUCKET or s3://BUCKET/PREFIX; endpoint and region come from the environment or ~/.aws/config' });
  }
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const path = slash < 0 ? '' : rest.slice(slash + 1).replace(/\/+$/, '');
  if (bucket === '') throw new InvalidInputError(`"${text}" names no bucket`, { hint: 'write s3://BUCKET or s3://BUCKET/PREFIX' });
  if (!BUCKET.test(bucket) || bucket.includes('..')) {
    throw new InvalidInputError(`"${bucket}" in ${text} is not a valid bucket name`, { hint: 'bucket names have 3 to 63 letters, digits, "." and "-", starting and ending with a letter or digit' });
  }
  if (path !== '' && path.split('/').some((s) => s === '' || s === '.' || s === '..')) {
    throw new InvalidInputError(`the prefix "${path}" in ${text} has an empty, "." or ".." segment`, { hint: 'write the prefix as a/b/c' });
  }
  return { bucket, prefix: path };
}

/** The canonical text of a location: `s3://bucket` or `s3://bucket/prefix`. */
export function formatS3Location(location: S3Location): string {
  return `${SCHEME}${location.bucket}${location.prefix === '' ? '' : `/${location.prefix}`}`;
}
