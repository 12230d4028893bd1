// Every call of the portal goes through Herald's REST API with the tenant's
// key as `Authorization: Bearer`. The key lives in sessionStorage only: it
// is gone when the tab closes, and it never appears in a URL.

const KEY = 'herald.apiKey';

export function storedKey(): string | null {
  return sessionStorage.getItem(KEY);
}
export function storeKey(key: string): void {
  sessionStorage.setItem(KEY, key);
}
export function forgetKey(): void {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(public status: number, public problem: any) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
  }
}

export type Page<T> = { data: T[]; next_cursor: string | null };

export async function api<T = any>(method: string, path: string, body?: unknown, key = storedKey()): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
    referrerPolicy: 'no-referrer',
  });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (!res.ok) {
    if (res.status === 401 && key && key === storedKey()) {
      // The key was revoked meanwhile: back to the sign-in page.
      forgetKey();
      window.dispatchEvent(new Event('herald:unauthorized'));
    }
    throw new ApiError(res.status, json);
  }
  return json as T;
}

export function qs(params: Record<string, string | number | boolean | null | undefined>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : '';
}

/// Opens the tenant's event stream. Browsers cannot set Authorization on a
/// WebSocket, so the key travels as the subprotocol `herald.bearer.<key>`
/// next to `herald.v1`, which the server selects (it never echoes the key).
export function openStream(eventTypes: string): WebSocket {
  const key = storedKey() ?? '';
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return new WebSocket(`${scheme}//${location.host}/api/v1/webhooks/stream${qs({ event_types: eventTypes })}`, [
    'herald.v1',
    `herald.bearer.${key}`,
  ]);
}

export type Subscription = {
  id: string;
  url: string;
  event_types: string[];
  description: string | null;
  status: 'active' | 'paused' | 'disabled';
  disabled_reason: string | null;
  previous_secret_expires_at: string | null;
  headers: Record<string, string>;
  rate_limit: number | null;
  filter?: string | null;
  payload?: 'full' | 'thin';
  kafka?: import('./kafka').KafkaView | null;
  auth?: import('./endpoint').AuthView | null;
  tls?: import('./endpoint').TlsView | null;
  created_at: string;
  updated_at: string;
  secret?: string;
  failing_since?: string | null;
};

export type Attempt = {
  id: string;
  delivery_id: string;
  event_id: string;
  subscription_id: string;
  attempt: number;
  trigger: 'initial' | 'retry' | 'replay';
  replay_of: string | null;
  url: string;
  created_at: string;
  status_code: number | null;
  latency_ms: number | null;
  response_body: string | null;
  error: string | null;
  error_message: string | null;
  outcome: 'delivered' | 'failed' | 'dead';
  next_attempt_at: string | null;
};

export type HeraldEvent = {
  id: string;
  event_type?: string;
  type?: string;
  payload?: unknown;
  data?: unknown;
  received_at?: string;
  occurred_at?: string;
  dedupe_key?: string | null;
  [k: string]: unknown;
};

export function eventType(e: HeraldEvent): string {
  return (e.event_type ?? e.type ?? '') as string;
}

export function fmtTime(s: string | null | undefined): string {
  if (!s) return '—';
  const d = new Date(s);
  return isNaN(d.getTime()) ? s : d.toLocaleString();
}
