import AttestationCore
import Foundation
import NIOCore
import NIOPosix
import Sealing
import WorkerAgent
import WorkerFraming
import WorkerProtocol

/// A modified worker (a provider with root on its host): it attests genuinely with a real TPM,
/// then answers every forwarded request with whatever `answer` returns, bypassing the engine
/// and everything ccworker would check.
enum HostileWorker {
    /// Runs until the connection ends; returns the `rejected` or `error` message that ended it.
    @discardableResult
    static func run(
        gatewayPort: Int, attestor: Attestor, id: String, model: String,
        proof: (@Sendable (_ gatewayID: String, _ workerKey: Data) -> Data)? = nil,
        answer: @escaping @Sendable (UInt64) -> [ChannelPayload] = { _ in [] }
    ) async throws -> WireMessage? {
        let connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: gatewayPort) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WireFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(WireFrameEncoder()))
                    return try NIOAsyncChannel<WireMessage, WireMessage>(wrappingChannelSynchronously: channel)
                }
            }
        let kem = WorkerKEMKey()
        return try await connection.executeThenClose { inbound, outbound -> WireMessage? in
            try await outbound.write(.hello(.init(workerID: id, kemPublicKey: kem.publicKeyBytes, models: [model])))
            var nonce = Data()
            var sealer: ChannelSealer?
            var opener: ChannelOpener?
            for try await message in inbound {
                switch message {
                case .challenge(let challenge):
                    nonce = challenge.nonce
                    let binding = attestationBinding(nonce: challenge.nonce, workerPublicKeys: kem.publicKeyBytes)
                    let envelope = try await attestor.evidence(binding: binding)
                    let signed = proof?(challenge.gatewayID, kem.publicKeyBytes)
                    try await outbound.write(.evidence(.init(envelope: envelope, providerProof: signed)))
                case .activate(let challenge):
                    try await outbound.write(
                        .activation(.init(secret: try await attestor.activateCredential(challenge))))
                case .admitted(let admitted):
                    let key = try SessionKeySealing.open(
                        .init(encapsulatedKey: admitted.encapsulatedKey, ciphertext: admitted.sealedSessionKey),
                        with: kem, context: Data(admitted.sessionID.utf8) + nonce)
                    sealer = ChannelSealer(sessionKey: key, sessionID: admitted.sessionID, direction: .workerToGateway)
                    opener = ChannelOpener(sessionKey: key, sessionID: admitted.sessionID, direction: .gatewayToWorker)
                case .sealed(let box):
                    guard let sealer, let opener else { return message }
                    let payload = try ChannelPayload(decoding: try opener.open(box))
                    guard case .request(let requestID, _, _, _, _) = payload else { continue }
                    var frames = [WireMessage]()
                    for reply in answer(requestID) {
                        try sealer.seal(reply.encoded()) { frames.append(.sealed($0)) }
                    }
                    for frame in frames { try await outbound.write(frame) }
                default:
                    return message
                }
            }
            return nil
        }
    }
}
