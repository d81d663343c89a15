// Calls to Fieldline's REST API: the token for this browser session, and errors as messages a
// person can act on.

const TOKEN_KEY = 'fieldline.token';

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** `path` with the token as `access_token`, for EventSource and links that cannot send headers. */
export function withToken(path) {
  const t = token();
  if (!t) return path;
  return `${path}${path.includes('?') ? '&' : '?'}access_token=${encodeURIComponent(t)}`;
}

/** The WebSocket URL of `path` on this server, with the token as `access_token`. */
export function socketUrl(path) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}${withToken(path)}`;
}

/** A device list typed in a field: "truck-*, van-3" as `["truck-*", "van-3"]`. */
export function idList(text) {
  return text.split(',').map((d) => d.trim()).filter(Boolean);
}

/** The ApiError for a response that is not ok, with the server's reason when it gave one. */
export async function failure(response) {
  let reason = '';
  try {
    reason = (await response.json()).error || '';
  } catch {
    // Not JSON (a proxy's page, say): the status says enough.
  }
  return new ApiError(response.status, reason || `${response.status} ${response.statusText}`);
}

/** A JSON call; throws ApiError with the server's reason, or status 0 when it is unreachable. */
export async function api(path, options = {}) {
  const headers = { Accept: 'application/json', ...(options.headers || {}) };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch {
    throw new ApiError(0, 'The server cannot be reached.');
  }
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return response.json();
}

/** What to tell the user about a failed call. */
export function describe(error, action) {
  if (!(error instanceof ApiError)) return `${action} failed: ${error.message}`;
  switch (error.status) {
    case 0:
      return `${action} failed: the server cannot be reached.`;
    case 401:
      return `${action} failed: an API token is needed.`;
    case 403:
      return `${action} failed: this token may not do that.`;
    default:
      return `${action} failed: ${error.message}`;
  }
}
