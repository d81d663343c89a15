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
  if (!response.ok) {
    let reason = '';
    try {
      reason = (await response.json()).error || '';
    } catch {
      // Not JSON (a proxy's page, say): the status says enough.
    }
    throw new ApiError(response.status, reason || `${response.status} ${response.statusText}`);
  }
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
