/** Constant-time comparison of secrets: both sides are hashed, then compared with timingSafeEqual. */

const encoder = new TextEncoder();

/** The SHA-256 of a string, as lowercase hex. */
export async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", encoder.encode(text));
  return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

function hexBytes(hex: string): Uint8Array {
  const bytes = new Uint8Array(hex.length / 2);
  for (let index = 0; index < bytes.length; index += 1) {
    bytes[index] = Number.parseInt(hex.slice(index * 2, index * 2 + 2), 16);
  }
  return bytes;
}

/** Whether two SHA-256 hex digests are equal, in time independent of where they differ. */
export function sameDigest(left: string, right: string): boolean {
  if (left.length !== right.length) {
    return false;
  }
  return crypto.subtle.timingSafeEqual(hexBytes(left), hexBytes(right));
}

/** Whether `candidate` equals `secret`; an empty secret never matches. */
export async function sameSecret(candidate: string, secret: string): Promise<boolean> {
  if (secret === "") {
    return false;
  }
  const [left, right] = await Promise.all([sha256Hex(candidate), sha256Hex(secret)]);
  return sameDigest(left, right);
}
