import NIOCore
import NIOHTTP1

/// What the admin listener serves.
public enum AdminRoute: Sendable, Hashable {
    /// `/metrics`: Prometheus's text format.
    case metrics
    /// `/healthz`: 200 while the UDP port serves, 503 otherwise.
    case health
    /// `/`: the status page.
    case status

    /// The route for `uri`'s path (the query, if any, is ignored); `nil`: not found.
    public init?(uri: String) {
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        switch path {
        case "/metrics": self = .metrics
        case "/healthz": self = .health
        case "/", "/index.html": self = .status
        default: return nil
        }
    }
}

/// One answer of the admin listener.
public struct AdminResponse: Sendable, Hashable {
    public var status: HTTPResponseStatus
    public var contentType: String
    public var body: [UInt8]

    public init(status: HTTPResponseStatus, contentType: String = "text/plain; charset=utf-8", body: [UInt8]) {
        self.status = status
        self.contentType = contentType
        self.body = body
    }

    /// A plain-text answer (errors, `/healthz`).
    public static func text(_ status: HTTPResponseStatus, _ text: String) -> AdminResponse {
        AdminResponse(status: status, body: Array((text + "\n").utf8))
    }
}

/// The admin listener's thin HTTP/1 handler, after NIO's codec: one request per connection,
/// GET or HEAD only, no request body; it asks `respond` for the route's answer, writes it
/// with `Connection: close` and closes. Anything else is answered here: 404 for an unknown
/// path, 405 (with `Allow`) for another method, 413 for a request that announces or sends a
/// body. An idle connection (`IdleStateHandler`'s event) is closed.
///
/// Serving one request per connection keeps the handler a three-state machine and bounds
/// what a client can make it hold: Prometheus and browsers open a new connection happily.
public final class AdminHTTPHandler: ChannelInboundHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias OutboundOut = HTTPServerResponsePart

    /// Makes a route's answer; called on the channel's event loop, and its future may
    /// complete on any loop.
    public typealias Responder = @Sendable (AdminRoute, any EventLoop) -> EventLoopFuture<AdminResponse>

    private enum State {
        /// Waiting for a request's head.
        case idle
        /// A head was read: the answer to write once the request ends (`route` nil: `fixed`).
        case reading(route: AdminRoute?, fixed: AdminResponse?, headOnly: Bool)
        /// An answer is being made or written; anything more the client sends is ignored.
        case answering
    }

    private let respond: Responder
    private var state = State.idle

    public init(respond: @escaping Responder) {
        self.respond = respond
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (unwrapInboundIn(data), state) {
        case (.head(let head), .idle):
            let announcesBody = head.headers["transfer-encoding"].isEmpty == false
                || head.headers["content-length"].contains { $0.filter { $0 != " " } != "0" }
            let headOnly = head.method == .HEAD
            if head.method != .GET && head.method != .HEAD {
                state = .reading(route: nil, fixed: .text(.methodNotAllowed, "method not allowed"), headOnly: false)
            } else if announcesBody {
                answer(.text(.payloadTooLarge, "request bodies are not accepted"), headOnly: headOnly, context: context)
            } else if let route = AdminRoute(uri: head.uri) {
                state = .reading(route: route, fixed: nil, headOnly: headOnly)
            } else {
                state = .reading(route: nil, fixed: .text(.notFound, "not found"), headOnly: headOnly)
            }
        case (.body, .reading(_, _, let headOnly)):
            answer(.text(.payloadTooLarge, "request bodies are not accepted"), headOnly: headOnly, context: context)
        case (.end, .reading(let route, let fixed, let headOnly)):
            state = .answering
            if let route {
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                respond(route, context.eventLoop).hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
                    let (handler, context) = bound.value
                    switch result {
                    case .success(let response): handler.write(response, headOnly: headOnly, context: context)
                    case .failure: handler.write(.text(.internalServerError, "internal error"), headOnly: headOnly, context: context)
                    }
                }
            } else {
                write(fixed ?? .text(.notFound, "not found"), headOnly: headOnly, context: context)
            }
        default:
            // A second request on the connection, or parts after the answer began: ignored
            // (the connection closes once the answer is written).
            break
        }
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A malformed request (NIO's decoder) or a reset: nothing to answer on this connection.
        context.close(promise: nil)
    }

    private func answer(_ response: AdminResponse, headOnly: Bool, context: ChannelHandlerContext) {
        state = .answering
        write(response, headOnly: headOnly, context: context)
    }

    private func write(_ response: AdminResponse, headOnly: Bool, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "Connection", value: "close")
        if response.status == .methodNotAllowed { headers.add(name: "Allow", value: "GET, HEAD") }
        if response.contentType.hasPrefix("text/html") {
            // The page has no script and loads nothing: say so, so that a browser enforces it.
            headers.add(name: "Content-Security-Policy", value: "default-src 'none'; style-src 'unsafe-inline'")
            headers.add(name: "X-Content-Type-Options", value: "nosniff")
        }
        let head = HTTPResponseHead(version: .http1_1, status: response.status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if !headOnly, !response.body.isEmpty {
            var buffer = context.channel.allocator.buffer(capacity: response.body.count)
            buffer.writeBytes(response.body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
