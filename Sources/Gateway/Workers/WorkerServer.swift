import AdmissionCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import WorkerFraming
import WorkerProtocol

/// The worker port: frame I/O around the worker session runner (``WorkerSessionRunner``), which
/// holds the protocol and every decision.
public struct WorkerServer: Sendable {
    typealias Connection = NIOAsyncChannel<WireMessage, WireMessage>

    public let runner: WorkerSessionRunner
    let logger: Logger

    public init(runner: WorkerSessionRunner, logger: Logger = Logger(label: "ccgate.workers")) {
        self.runner = runner
        self.logger = logger
    }

    /// Binds the worker port; `onBound` receives the actual port (useful with port 0). Runs until
    /// the task is cancelled.
    public func run(host: String, port: Int, onBound: @Sendable (Int) -> Void = { _ in }) async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // A peer that stops sending still gets the error that explains why it is dropped.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WireFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(WireFrameEncoder()))
                    return try Connection(
                        wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
                }
            }
        let bound = server.channel.localAddress?.port ?? port
        onBound(bound)
        logger.info("worker port listening", metadata: ["ccgate.port": "\(bound)"])
        try await withTaskCancellationHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask { await serve(connection) }
                    }
                }
            }
        } onCancel: {
            server.channel.close(promise: nil)
        }
    }

    func serve(_ connection: Connection) async {
        let peer = connection.channel.remoteAddress?.description ?? "?"
        do {
            try await connection.executeThenClose { inbound, outbound in
                await runner.run(
                    inbound, on: FramedConnection(peer: peer, channel: connection.channel, outbound: outbound))
            }
        } catch {
            logger.debug("worker connection ended", metadata: ["ccgate.peer": "\(peer)", "error": "\(error)"])
        }
    }
}

/// A worker connection as NIO carries it.
struct FramedConnection: WorkerConnection {
    let peer: String
    let channel: any Channel
    let outbound: NIOAsyncChannelOutboundWriter<WireMessage>

    func send(_ message: WireMessage) async throws { try await outbound.write(message) }
    func close() { channel.close(promise: nil) }
}
