import AttestationCore
import Foundation
import HummingbirdCore
import Logging
import NIOCore
import NIOSSL
import Synchronization

/// The front door's and the admin API's TLS identity: a PEM certificate chain and key, read at
/// start and again on SIGHUP. A reload that fails keeps the identity in force.
///
/// Threat: prompts, API keys and admin tokens read or altered on the network between client and
/// gateway. TLS 1.2 or newer only; plain HTTP only on loopback unless explicitly allowed.
/// Connections already open keep the certificate they were accepted with, so a reload never
/// drops a stream in progress; every new connection gets the newest.
public final class TLSIdentity: Sendable {
    public let certificatePath: String
    public let keyPath: String
    private let context: Mutex<NIOSSLContext>
    /// SHA-256 of the leaf certificate in force (DER), for logs.
    private let leaf: Mutex<String>

    public init(certificatePath: String, keyPath: String) throws {
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        let (context, leaf) = try Self.load(certificatePath: certificatePath, keyPath: keyPath)
        self.context = Mutex(context)
        self.leaf = Mutex(leaf)
    }

    var current: NIOSSLContext { context.withLock { $0 } }
    public var leafFingerprint: String { leaf.withLock { $0 } }

    /// Reads the files again; on failure the previous identity stays and the error is thrown.
    public func reload() throws {
        let (fresh, fingerprint) = try Self.load(certificatePath: certificatePath, keyPath: keyPath)
        context.withLock { $0 = fresh }
        leaf.withLock { $0 = fingerprint }
    }

    static func load(certificatePath: String, keyPath: String) throws -> (NIOSSLContext, String) {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do { chain = try NIOSSLCertificate.fromPEMFile(certificatePath) } catch {
            throw GatewayStartError("\(certificatePath): not a PEM certificate chain (\(error))")
        }
        guard let first = chain.first else { throw GatewayStartError("\(certificatePath): no certificate") }
        do { key = try NIOSSLPrivateKey(file: keyPath, format: .pem) } catch {
            throw GatewayStartError("\(keyPath): not a PEM private key (\(error))")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        let context: NIOSSLContext
        do { context = try NIOSSLContext(configuration: configuration) } catch {
            throw GatewayStartError(
                "\(certificatePath), \(keyPath): the certificate and key do not make a TLS identity (\(error))")
        }
        let der = Data(try first.toDERBytes())
        return (context, HashAlgorithm.sha256.hash(der).hex)
    }

    /// An HTTP/1.1 server whose connections start with TLS under the identity in force when each
    /// is accepted.
    func server(_ configuration: HTTP1Channel.Configuration) -> HTTPServerBuilder {
        HTTPServerBuilder { responder in
            ReloadableTLSChannel(base: HTTP1Channel(responder: responder, configuration: configuration), identity: self)
        }
    }
}

/// A child channel that adds a TLS handler with the identity's current context, then the base
/// channel's own setup.
struct ReloadableTLSChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let identity: TLSIdentity

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: identity.current))
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

/// Whether `host` is a loopback address (where plain HTTP is allowed without a flag): `localhost`,
/// an IPv4 address in 127.0.0.0/8 or `::1`, parsed as addresses (a name like `127.evil.example`
/// is not one).
package func isLoopback(_ host: String) -> Bool {
    if host == "localhost" { return true }
    var v4 = in_addr()
    if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
    var v6 = in6_addr()
    let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    if inet_pton(AF_INET6, bare, &v6) == 1 {
        return withUnsafeBytes(of: &v6) { Array($0) } == [UInt8](repeating: 0, count: 15) + [1]
    }
    return false
}
